"""``stt.groq``'s early request on the falling VAD score (``early_score``), against the fake Groq.

The VAD frames are scripted (Silero's shape after the last word: 1.0, 0.72, 0.28), so the windows at
which requests start are exact; what each request heard comes from its ``stt_started`` event. With
``early_score: 0.9`` the request goes out a window sooner (at 0.72), and a voiced window after it
(>= ``voiced_score``) still cancels it and asks again, so the final transcript has heard every voiced
window.
"""

from __future__ import annotations

import asyncio
import io
import wave

import pytest

from ah.runtime.graph_loader import load_graph
from ah.runtime.sdk import AudioFrame, Frame, Node, Output, Params, TranscriptFrame, VadFrame
from ah.runtime.session import Session
from tests.fakes.groq import FakeGroq, GroqConfig
from tests.runtime_nodes import REGISTRY, events_of, frames_of
from tests.server_helpers import ROOT

SR = 16000
WINDOW_S = 0.032


class SttFeed(Node[Params]):
    """Sends the frames the test put in ``attachments["feed"]``: audio to ``audio``, VAD to ``vad``."""

    audio = Output(AudioFrame)
    vad = Output(VadFrame)

    async def run(self) -> None:
        feed: asyncio.Queue[Frame | None] = self.ctx.attachments["feed"]
        while (frame := await feed.get()) is not None:
            if isinstance(frame, AudioFrame):
                await self.audio.send(frame)
            else:
                assert isinstance(frame, VadFrame)
                await self.vad.send(frame)


REGISTRY.register("test.stt_feed", SttFeed)


def graph_text(params: str) -> str:
    return f"""
graph: stt-early
nodes:
  src: {{type: test.stt_feed}}
  stt: {{type: stt.groq, params: {{speculative: true, early_ms: 32, endpoint_silence_ms: 300, {params}}}}}
  rec: {{type: test.recorder}}
edges:
  - src.audio -> stt.audio
  - src.vad -> stt.vad
  - stt.transcripts -> rec.inp
"""


def frames(tail: list[float]) -> list[Frame]:
    """1.4 s of audio; speech confirmed at 0.192 s (from 0.1 s), voiced windows to 0.8 s, then ``tail``'s
    scores, silence after; the VAD's end where the first window below 0.35 began (+30 ms pad),
    confirmed 160 ms later (vad.silero's rules)."""
    out: list[Frame] = [AudioFrame(b"\x01\x00" * int(1.4 * SR))]
    scores = [1.0] * 25 + tail + [0.05] * (43 - 25 - len(tail))
    silent_since: float | None = None
    ended = False
    for k, score in enumerate(scores, start=1):
        t = round(k * WINDOW_S, 3)
        out.append(VadFrame("score", t, score))
        if k == 6:
            out.append(VadFrame("start", 0.1, score, confirmed_at=t))
        if k > 6 and silent_since is None and score < 0.35:
            silent_since = round(t - WINDOW_S, 3)
        if silent_since is not None and not ended and t - silent_since >= 0.16 - 1e-9:
            out.append(VadFrame("end", round(silent_since + 0.03, 3), score, confirmed_at=t))
            ended = True
    return out


def heard(wav: bytes) -> str:
    """The fake's transcript says how much audio it was sent, so the final shows which request it is."""
    with wave.open(io.BytesIO(wav)) as w:
        return f"heard {w.getnframes() / SR:.3f} s"


def run_stt(monkeypatch: pytest.MonkeyPatch, params: str, tail: list[float]) -> Session:
    async def main() -> Session:
        with FakeGroq(GroqConfig(transcribe_fn=heard)) as groq:
            monkeypatch.setenv("GROQ_API_KEY", "gsk_test")
            monkeypatch.setenv("GROQ_BASE_URL", groq.base_url)
            feed: asyncio.Queue[Frame | None] = asyncio.Queue()
            for f in frames(tail):
                feed.put_nowait(f)
            feed.put_nowait(None)
            session = Session(
                load_graph("stt-early.yaml", REGISTRY, text=graph_text(params)), attachments={"feed": feed}
            )
            await asyncio.wait_for(session.run(), 30)
            return session

    return asyncio.run(main())


def started(session: Session) -> list[tuple[float, float]]:
    """Every transcription started: (end of the utterance so far, seconds of audio sent)."""
    return [
        (round(e.data["t_end"], 3), round(e.data["audio_s"], 3)) for e in events_of(session, "stt_started")
    ]


def finals(session: Session) -> list[TranscriptFrame]:
    out = [f for f in frames_of(session, "rec") if isinstance(f, TranscriptFrame) and f.final]
    return out


def test_the_early_request_goes_out_on_the_falling_score(monkeypatch: pytest.MonkeyPatch) -> None:
    tail = [0.72, 0.28]  # windows ending at 0.832 s and 0.864 s
    # Default (early_score = voiced_score 0.5): at the first window below 0.5, with the audio to its end.
    plain = run_stt(monkeypatch, "", tail)
    assert started(plain) == [(0.832, 0.864)]
    # early_score 0.9: one window sooner, at the first window below 0.9, with the audio to its end.
    early = run_stt(monkeypatch, "early_score: 0.9", tail)
    assert started(early) == [(0.832, 0.832)]
    # Either way the early request is the utterance's only one, and its answer the final transcript.
    assert [f.text for f in finals(plain)] == ["heard 0.864 s"]
    assert [f.text for f in finals(early)] == ["heard 0.832 s"]


def test_a_voiced_window_after_the_early_request_cancels_it_and_asks_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 0.85 at 0.832 s (below 0.9: ask, with the audio to 0.832 s), then 0.6: still voiced (>= 0.5), so
    # the first request has not heard all the speech; it is cancelled, and the next one includes that
    # window (below 0.9 too, so it asks at once).
    session = run_stt(monkeypatch, "early_score: 0.9", [0.85, 0.6, 0.2])
    assert started(session) == [(0.832, 0.832), (0.864, 0.864)]
    assert [f.text for f in finals(session)] == ["heard 0.864 s"]


def test_cloud_yaml_has_the_final_transcript_in_before_the_turn_ends() -> None:
    """A turn waits for its final transcript, and stt.groq closes an utterance on the VAD's 32 ms
    windows: at the turn's own silence, the final came at the window after the turn's deadline and a
    held reply that was ready waited for it. graphs/cloud.yaml closes the utterance at least a window
    sooner (the turn still ends after its full silence)."""
    g = load_graph(ROOT / "graphs" / "cloud.yaml", REGISTRY)
    stt, turn = g.nodes["stt"].params, g.nodes["turn"].params
    assert stt.endpoint_silence_ms + 32 <= turn.endpoint_silence_ms
    assert turn.endpoint_silence_ms == 400  # the endpointing silence itself is unchanged
