"""``turn_policy.silence``: end the user's turn after a stretch of silence; barge in on real speech.

The turn policy is the only node that opens and cancels reply scopes (ARCHITECTURE.md §3):

* end of turn: ``endpoint_silence_ms`` after VAD's end of speech with no new speech, once the
  segment's final transcript is in, it opens a scope and sends the turn to the LLM;
* barge-in: when the user has spoken for ``barge_in_min_speech_ms`` while a reply is live, it
  cancels that reply's scope (LLM, TTS and queued audio stop at once) and reports the interruption;
* typed messages (``user_message``) are turns at once, and interrupt a live reply.
"""

from __future__ import annotations

import asyncio

from pydantic import Field

from ah.runtime.sdk import (
    Input,
    InterruptionFrame,
    Node,
    Output,
    Params,
    SessionEvent,
    TranscriptFrame,
    UserTurnFrame,
    VadFrame,
)


class SilenceTurnParams(Params):
    endpoint_silence_ms: int = Field(400, ge=0, le=5000, description="Silence that ends a user turn.")
    barge_in: bool = Field(True, description="Let the user interrupt the agent by speaking.")
    barge_in_min_speech_ms: int = Field(
        300, ge=0, le=5000, description="Speech this long while the agent talks cancels its reply."
    )


class SilenceTurnPolicy(Node[SilenceTurnParams]):
    """Silence endpointing plus barge-in after a minimum of user speech."""

    summary = "end the turn after silence; barge-in after a minimum of speech"
    params_model = SilenceTurnParams
    vad = Input(VadFrame, doc="speech start / end")
    transcripts = Input(TranscriptFrame, doc="final transcripts of speech segments")
    typed = Input(UserTurnFrame, required=False, doc="typed user turns")
    turns = Output(UserTurnFrame, doc="committed user turns, each in a new reply scope")
    interruptions = Output(InterruptionFrame, doc="replies cut off by the user")

    async def run(self) -> None:
        self._pending: list[str] = []
        self._speaking = False
        self._silence_since: float | None = None
        self._endpoint: asyncio.Task[None] | None = None
        self._barge: asyncio.Task[None] | None = None
        self._last_speech_end = 0.0
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._vad_loop())
            tg.create_task(self._transcript_loop())
            tg.create_task(self._typed_loop())
        for task in (self._endpoint, self._barge):
            if task is not None:
                task.cancel()

    def report(self, event: str, **data: object) -> None:
        """A ``turn`` session event (the conversation simulator draws them on its timeline)."""
        self.ctx.emit(SessionEvent("turn", data={"event": event, "t": self.ctx.clock.now(), **data}))

    # -- inputs ----------------------------------------------------------------------------------------------
    async def _vad_loop(self) -> None:
        async for ev in self.vad:
            if ev.kind == "start":
                self._speaking = True
                self.report("speech_start", audio_t=ev.t)
                self._cancel(self._endpoint)
                if self.params.barge_in and self.ctx.scopes.live():
                    self._barge = asyncio.get_running_loop().create_task(self._barge_in_after_min_speech())
            elif ev.kind == "end":
                self._speaking = False
                self._cancel(self._barge)
                self._last_speech_end = ev.t
                self.report("speech_end", audio_t=ev.t)
                already = max(0.0, ev.confirmed_at - ev.t) if ev.confirmed_at else 0.0
                self._endpoint = asyncio.get_running_loop().create_task(self._endpoint_after_silence(already))

    async def _transcript_loop(self) -> None:
        async for tr in self.transcripts:
            if tr.final and tr.text.strip():
                self._pending.append(tr.text.strip())
                if not self._speaking and (self._endpoint is None or self._endpoint.done()):
                    await self._commit()  # the silence already ran out while STT was working

    async def _typed_loop(self) -> None:
        async for turn in self.typed:
            await self._interrupt_live()
            scope = self.ctx.scopes.open("reply")
            await self.turns.send(UserTurnFrame(turn.text, typed=True, scope=scope))

    # -- decisions ---------------------------------------------------------------------------------------------
    async def _endpoint_after_silence(self, already_silent_s: float = 0.0) -> None:
        # The silence is counted from the end of speech: the VAD's own hysteresis is part of it.
        await self.ctx.clock.sleep(max(0.0, self.params.endpoint_silence_ms / 1000 - already_silent_s))
        if self._pending and not self._speaking:
            await self._commit()

    async def _commit(self) -> None:
        text = " ".join(self._pending)
        self._pending.clear()
        await self._interrupt_live()
        scope = self.ctx.scopes.open("reply")
        self.report("end_of_turn", scope=scope, text=text, audio_t=self._last_speech_end)
        await self.turns.send(UserTurnFrame(text, scope=scope, t_end_of_speech=self._last_speech_end))

    async def _barge_in_after_min_speech(self) -> None:
        await self.ctx.clock.sleep(self.params.barge_in_min_speech_ms / 1000)
        if self._speaking:
            await self._interrupt_live()

    async def _interrupt_live(self) -> None:
        for scope in self.ctx.scopes.live():
            self.ctx.scopes.cancel(scope)
            self.report("interrupt", scope=scope)
            await self.interruptions.send(InterruptionFrame(scope))

    @staticmethod
    def _cancel(task: asyncio.Task[None] | None) -> None:
        if task is not None and not task.done():
            task.cancel()
