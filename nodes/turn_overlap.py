"""``turn_policy.overlap_aware``: pause the agent when the user makes a sound; commit or resume.

Silence endpointing (as ``turn_policy.silence``) plus the overlap handling of
:mod:`ah.nodes.turn_common`: a cough, a noise or a backchannel ("mm-hmm", "yeah") while the agent
speaks pauses the reply and then resumes it where it stopped; real speech (``interrupt_min_speech_ms``
of it, or ``interrupt_min_words`` transcribed words that are not backchannels) commits the
interruption, with an ``agent_response_correction`` that says what the user heard.
"""

from __future__ import annotations

from ah.nodes.turn_common import OverlapAwareBase, OverlapParams


class OverlapAwareParams(OverlapParams):
    pass


class OverlapAwareTurnPolicy(OverlapAwareBase):
    """Silence endpointing; pause on overlap, then commit the interruption or resume the reply."""

    summary = "pause on overlap; commit by duration / words, resume after noise or backchannel"
    params_model = OverlapAwareParams
