"""What the overlap-aware turn policies share: pause on overlap, commit or resume, endpointing.

A helper module for turn-policy nodes (``turn_policy.overlap_aware``, ``turn_policy.smart_turn``), as
``inference.py`` is for model nodes. It is not a node itself.

**Overlap.** When the user makes a sound while a reply is live, the reply is *paused*, not killed
(ARCHITECTURE.md §3: its audio is held where it is; what the client already holds, at most
protocol_out's ``audio_lead_ms``, plays out). Then one of two things happens:

* **commit** — the user goes on speaking for ``interrupt_min_speech_ms``, or a transcript of the burst
  has at least ``interrupt_min_words`` words that are not all backchannels: the reply's scope is
  cancelled and an ``InterruptionFrame`` sent (protocol_out sends ``interruption``, then
  ``agent_response_correction`` with what the listener heard, from the playout position and the TTS
  timings). The user's words become the next turn.
* **resume** — the burst ends short and its transcript is empty, noise (``[cough]``) or only
  backchannels ("mm-hmm", "yeah", "right": ``backchannels``), or no transcript comes within
  ``resume_timeout_ms`` of the burst's end: the same reply resumes where it paused. A late transcript
  with real words still makes a turn.

LiveKit Agents resumes after a false interruption too, after a fixed 2.0 s; here it is as soon as the
transcript says so, or ``resume_timeout_ms`` (700 ms) at most.

**Endpointing.** A user turn ends ``end_of_turn_wait()`` seconds of silence after the VAD's end of speech
(counted from the end of speech, not the VAD's confirmation), once its final transcript is in. The
default wait is ``endpoint_silence_ms``; ``turn_policy.smart_turn`` asks its model instead.

**Preemptive generation** (``preemptive: true``): when speech has ended and its transcript is in but
the end-of-turn silence is still being timed, the reply starts at once in a *paused* scope, so the LLM
(and everything the runtime lets run under a paused scope) works ahead while nothing reaches the
listener. If the turn then ends with the same text, the scope is resumed (the reply is already under
way); if the user goes on, or the turn's text grows, the scope is cancelled and its work dropped. A
reply to a turn that was not final is never heard.

**Decisions are reported** as session events of kind ``turn`` (``data.event``: ``speech_start``,
``speech_end``, ``pause``, ``resume``, ``interrupt``, ``end_of_turn``, ...; ``data.t``: session clock
time), which the conversation simulator draws on its timeline.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from ah.runtime.sdk import (
    Input,
    InterruptionFrame,
    Node,
    Output,
    Params,
    ScopeState,
    SessionEvent,
    TranscriptFrame,
    UserTurnFrame,
    VadFrame,
)

DEFAULT_BACKCHANNELS = [
    "mm-hmm",
    "mhm",
    "mm",
    "hmm",
    "uh-huh",
    "uh",
    "um",
    "ah",
    "oh",
    "yeah",
    "yep",
    "right",
    "okay",
    "ok",
    "sure",
    "i see",
    "got it",
]
PREEMPT_POLL = 20  # loop turns a preemptive reply's LLM gets to take its turn before the reply is paused
_NOISE_TAG = re.compile(r"[\[(\*][^\])\*]*[\])\*]")  # Whisper's "[coughing]", "(laughs)", "*sigh*"
_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


_STRETCHED = re.compile(r"([a-z])\1{2,}")  # "mmm", "hmmm", "ohhh": a held sound, spelt longer


def words_of(text: str) -> list[str]:
    """The spoken words of a transcript: lower case, punctuation and noise tags removed, held sounds
    ("mmm", "hmmm") spelt short ("mm", "hmm")."""
    return _WORD.findall(_STRETCHED.sub(r"\1\1", _NOISE_TAG.sub(" ", text.lower())))


def is_backchannel(text: str, phrases: list[str]) -> bool:
    """True when ``text`` is empty, noise, or made only of backchannel phrases ("mm-hmm, yeah")."""
    words = words_of(text)
    table = sorted((words_of(p) for p in phrases), key=len, reverse=True)
    i = 0
    while i < len(words):
        for phrase in table:
            if phrase and words[i : i + len(phrase)] == phrase:
                i += len(phrase)
                break
        else:
            return False
    return True


class OverlapParams(Params):
    endpoint_silence_ms: int = Field(400, ge=0, le=5000, description="Silence that ends a user turn.")
    barge_in: bool = Field(True, description="Let the user interrupt the agent by speaking.")
    interrupt_min_speech_ms: int = Field(
        600,
        ge=0,
        le=5000,
        description="Voiced speech this long while the agent talks commits the interruption (cancels the "
        "reply). Measured on the VAD's scores (first to last voiced window), so the VAD's hangover does "
        "not count; the reply is already paused, so a longer wait costs the listener nothing.",
    )
    voiced_score: float = Field(
        0.5, gt=0, lt=1, description="A VAD score at or above this marks a voiced window."
    )
    interrupt_min_words: int = Field(
        1,
        ge=1,
        le=20,
        description="A transcript of the overlapping speech with this many words (backchannels aside) "
        "commits the interruption.",
    )
    resume_timeout_ms: int = Field(
        700,
        ge=0,
        le=10000,
        description="After a short burst ends, how long to wait for its transcript before resuming the reply.",
    )
    preemptive: bool = Field(
        False,
        description="Preemptive generation: once speech has ended and its transcript is in, start the reply "
        "while the silence is still being timed, held (paused) so nothing of it is heard; it is released if "
        "the turn ends with that text, and dropped if the user goes on.",
    )
    backchannels: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BACKCHANNELS),
        description="Phrases that, said while the agent talks, do not take the turn (the reply resumes).",
    )


@dataclass(slots=True)
class _Overlap:
    """One possible interruption: the replies paused, and the timers that will settle it."""

    paused: list[int]
    burst_start: float  # audio time of the first burst's start
    burst_end: float | None = None  # audio time of the latest burst's end
    commit_timer: asyncio.Task[None] | None = None
    resume_timer: asyncio.Task[None] | None = None
    bursts: int = 1
    heard: list[str] = field(default_factory=list)


class OverlapAwareBase(Node[Any]):
    """Endpointing plus pause-on-overlap with commit or resume. Subclasses may change ``end_of_turn_wait``."""

    vad = Input(VadFrame, doc="speech start / end")
    transcripts = Input(TranscriptFrame, doc="final transcripts of speech segments")
    typed = Input(UserTurnFrame, required=False, doc="typed user turns")
    turns = Output(UserTurnFrame, doc="committed user turns, each in a new reply scope")
    interruptions = Output(InterruptionFrame, doc="replies cut off by the user")

    async def run(self) -> None:
        self._pending: list[str] = []
        self._speaking = False
        self._endpoint: asyncio.Task[None] | None = None
        self._overlap: _Overlap | None = None
        self._resumed_upto = -1.0  # audio time: transcripts of bursts up to here were judged not a turn
        self._last_speech_end = 0.0
        self._utt_start: float | None = None  # audio time the current user utterance began
        self._preempt: tuple[int, str] | None = None  # a held reply started on a tentative end of turn
        self._last_voiced = -1.0  # audio time of the latest voiced VAD window
        self._scores_seen = False
        async with asyncio.TaskGroup() as tg:
            # Timers run in the node's task group too: one that raises fails the node (and names it).
            self._tg = tg
            tg.create_task(self._vad_loop())
            tg.create_task(self._transcript_loop())
            tg.create_task(self._typed_loop())
        self._cancel(self._endpoint)
        if self._overlap is not None:
            self._cancel(self._overlap.commit_timer)
            self._cancel(self._overlap.resume_timer)

    # -- reporting ---------------------------------------------------------------------------------------------
    def report(self, event: str, **data: Any) -> None:
        self.ctx.emit(SessionEvent("turn", data={"event": event, "t": self.ctx.clock.now(), **data}))

    # -- what subclasses may change -------------------------------------------------------------------------
    async def end_of_turn_wait(self, speech_end: float) -> float:
        """Seconds of silence after the end of speech (audio time ``speech_end``) that end the turn."""
        return float(self.params.endpoint_silence_ms) / 1000

    def on_audio_time(self, t: float) -> None:
        """Hook: the VAD has reported up to audio time ``t``."""

    # -- inputs ----------------------------------------------------------------------------------------------
    async def _vad_loop(self) -> None:
        async for ev in self.vad:
            if ev.kind == "score":
                self._scores_seen = True
                self.on_audio_time(ev.t)
                if ev.score >= self.params.voiced_score:
                    self._last_voiced = ev.t
                    ov = self._overlap
                    if (
                        ov is not None
                        and self._speaking
                        and ev.t - ov.burst_start >= self.params.interrupt_min_speech_ms / 1000 - 1e-9
                    ):
                        await self._commit_interruption(ov, "speech")
                continue
            if ev.kind == "start":
                self._on_speech_start(ev)
            elif ev.kind == "end":
                self._on_speech_end(ev)

    def _on_speech_start(self, ev: VadFrame) -> None:
        tg = self._tg
        self._speaking = True
        self._cancel(self._endpoint)
        self._drop_preempt("speech resumed")
        if self._utt_start is None:
            self._utt_start = ev.t
        self.report("speech_start", audio_t=ev.t)
        live = self.ctx.scopes.live()
        if not (self.params.barge_in and live):
            return
        ov = self._overlap
        if ov is None:
            paused = [s for s in live if self.ctx.scopes.pause(s)]
            ov = self._overlap = _Overlap(paused, ev.t)
            self.report("pause", scopes=paused, audio_t=ev.t)
        else:
            ov.bursts += 1
            self._cancel(ov.resume_timer)
        ov.burst_start = ev.t
        if not self._scores_seen:  # a VAD without scores: count from the confirmation instead
            ov.commit_timer = tg.create_task(self._commit_after_min_speech(ov))

    def _on_speech_end(self, ev: VadFrame) -> None:
        self._speaking = False
        self._last_speech_end = ev.t
        already = max(0.0, ev.confirmed_at - ev.t) if ev.confirmed_at else 0.0
        self.report("speech_end", audio_t=ev.t)
        tg = self._tg
        self._endpoint = tg.create_task(self._endpoint_after_silence(ev.t, already))
        ov = self._overlap
        if ov is not None:
            self._cancel(ov.commit_timer)
            ov.burst_end = ev.t
            wait = max(0.0, self.params.resume_timeout_ms / 1000 - already)
            ov.resume_timer = tg.create_task(self._resume_after(ov, wait, "no transcript in time"))

    async def _transcript_loop(self) -> None:
        async for tr in self.transcripts:
            if not tr.final:
                continue
            text = tr.text.strip()
            ov = self._overlap
            not_a_turn = is_backchannel(text, self.params.backchannels) or (
                len(words_of(text)) < self.params.interrupt_min_words
            )
            if ov is not None:
                if not_a_turn:
                    self.report("backchannel", text=text)
                    ov.heard.append(text)
                    if not self._speaking:
                        self._resume(ov, f"not a turn: {text!r}" if text else "no words")
                    continue
                await self._commit_interruption(ov, f"words: {text!r}")
            elif not_a_turn and tr.t_start <= self._resumed_upto + 1e-6:
                self.report("backchannel", text=text, late=True)
                continue  # the late transcript of a burst the reply already resumed after
            if text:
                self._pending.append(text)
                if not self._speaking and (self._endpoint is None or self._endpoint.done()):
                    await self._commit_turn()  # the silence already ran out while STT was working
                elif self.params.preemptive and not self._speaking and self._overlap is None:
                    await self._start_preempt()

    async def _typed_loop(self) -> None:
        async for turn in self.typed:
            self._drop_preempt("typed turn")
            if self._overlap is not None:  # a typed turn settles a pending interruption too
                self._cancel(self._overlap.commit_timer)
                self._cancel(self._overlap.resume_timer)
                self._overlap = None
            await self._interrupt_live("typed")
            scope = self.ctx.scopes.open("reply")
            await self.turns.send(UserTurnFrame(turn.text, typed=True, scope=scope))

    # -- overlap decisions ------------------------------------------------------------------------------------
    async def _commit_after_min_speech(self, ov: _Overlap) -> None:
        await self.ctx.clock.sleep(self.params.interrupt_min_speech_ms / 1000)
        if self._speaking and self._overlap is ov:
            await self._commit_interruption(ov, "speech")

    async def _resume_after(self, ov: _Overlap, wait: float, reason: str) -> None:
        await self.ctx.clock.sleep(wait)
        if self._overlap is ov and not self._speaking:
            self._resume(ov, reason)

    def _resume(self, ov: _Overlap, reason: str) -> None:
        self._cancel(ov.commit_timer)
        self._cancel(ov.resume_timer)
        self._overlap = None
        self._resumed_upto = ov.burst_end if ov.burst_end is not None else self._resumed_upto
        resumed = [s for s in ov.paused if self.ctx.scopes.resume(s)]
        # The burst was not a turn: it must not end up in the next one.
        self._utt_start = None
        self.report("resume", scopes=resumed, reason=reason)

    async def _commit_interruption(self, ov: _Overlap, reason: str) -> None:
        self._cancel(ov.commit_timer)
        self._cancel(ov.resume_timer)
        self._overlap = None
        for scope in ov.paused:
            if self.ctx.scopes.state(scope) in (ScopeState.PAUSED, ScopeState.ACTIVE):
                self.ctx.scopes.cancel(scope)
                self.report("interrupt", scope=scope, reason=reason)
                await self.interruptions.send(InterruptionFrame(scope))
        await self._interrupt_live(reason)

    # -- endpointing -------------------------------------------------------------------------------------------
    async def _endpoint_after_silence(self, speech_end: float, already_silent_s: float) -> None:
        wait = await self.end_of_turn_wait(speech_end)
        await self.ctx.clock.sleep(max(0.0, wait - already_silent_s))
        if self._pending and not self._speaking and self._overlap is None:
            await self._commit_turn()

    async def _commit_turn(self) -> None:
        text = " ".join(self._pending)
        self._pending.clear()
        self._utt_start = None
        pre, self._preempt = self._preempt, None
        if pre is not None and pre[1] == text and self.ctx.scopes.state(pre[0]) is ScopeState.PAUSED:
            # The turn ended as it was when the reply was started: release it (it is already under way).
            await self._interrupt_live("new turn", keep=pre[0])
            self.ctx.scopes.resume(pre[0])
            self.report("end_of_turn", scope=pre[0], text=text, audio_t=self._last_speech_end, preempted=True)
            return
        if pre is not None:
            self._preempt = pre
            self._drop_preempt("the turn grew")
        await self._interrupt_live("new turn")
        scope = self.ctx.scopes.open("reply")
        self.report("end_of_turn", scope=scope, text=text, audio_t=self._last_speech_end)
        await self.turns.send(UserTurnFrame(text, scope=scope, t_end_of_speech=self._last_speech_end))

    async def _start_preempt(self) -> None:
        """A tentative end of turn: start the reply now, held until the turn is final."""
        text = " ".join(self._pending)
        if self._preempt is not None and self._preempt[1] == text:
            return
        self._drop_preempt("the turn grew")
        scopes = self.ctx.scopes
        scope = scopes.open("reply")
        self._preempt = (scope, text)
        self.report("preempt", scope=scope, text=text)
        await self.turns.send(UserTurnFrame(text, scope=scope, t_end_of_speech=self._last_speech_end))
        # Pause it once the LLM has taken the turn (a paused frame would wait in the LLM's input): from
        # then on everything it makes is held, and protocol_out sends nothing of a paused reply.
        s = scopes.get(scope)
        for _ in range(PREEMPT_POLL):
            if s is None or s.tasks or scopes.state(scope) is not ScopeState.ACTIVE:
                break
            await asyncio.sleep(0)
        scopes.pause(scope)

    def _drop_preempt(self, reason: str) -> None:
        pre, self._preempt = self._preempt, None
        if pre is not None:
            self.ctx.scopes.cancel(pre[0])  # its LLM and TTS work stop; its held frames are purged
            self.report("preempt_dropped", scope=pre[0], reason=reason)

    async def _interrupt_live(self, reason: str, keep: int | None = None) -> None:
        for scope in self.ctx.scopes.live():
            if scope == keep:
                continue
            self.ctx.scopes.cancel(scope)
            self.report("interrupt", scope=scope, reason=reason)
            await self.interruptions.send(InterruptionFrame(scope))

    @staticmethod
    def _cancel(task: asyncio.Task[None] | None) -> None:
        if task is not None and not task.done():
            task.cancel()
