"""``llm.scripted``: deterministic replies from YAML, streamed word by word like a real LLM.

Named for what it is: no model. It exists for tests, demos and benchmarks of everything around the
LLM (turn-taking, barge-in, the protocol), with replies and timings that never change. It keeps the
contract every LLM node keeps: a reply runs inside the scope of its user turn and streams
``start`` / ``delta`` / ``stop`` text; ``{{variable}}`` placeholders take the client's dynamic variables.

It can also call client tools, so the protocol's ``client_tool_call`` / ``client_tool_result`` round
trip runs end to end without a model: a trigger word in the user's turn makes it ask the client to
run a tool (in the turn's scope, so the call shares the reply's event id), wait for the result and
speak a reply built from it.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any

from pydantic import Field

from ah.nodes.llm_prompt import fill_variables
from ah.runtime.sdk import ControlFrame, Input, Node, Output, Params, ReplyTextFrame, UserTurnFrame


class ScriptedToolCall(Params):
    """One client tool the script calls when its trigger word is in the user's turn."""

    tool_name: str = Field(description="Name of the client tool (the client registers it under this name).")
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="Parameters sent with the call; string values take {{variables}}."
    )
    reply: str = Field(
        "",
        description="Said once the client has answered; {{tool_result}} is the client's result. "
        "Empty: the next scripted reply.",
    )


class ScriptedLlmParams(Params):
    replies: list[str] = Field(default_factory=list, description="Replies, in order (cycling).")
    echo: bool = Field(False, description="Reply 'You said: <turn>' instead of the scripted replies.")
    first_message: str = Field(
        "", description="Said when the conversation starts (empty: wait for the user)."
    )
    system_prompt: str = Field("", description="Kept for graphs that allow prompt overrides; not used.")
    first_token_ms: int = Field(50, ge=0, description="Simulated time to first token.")
    word_ms: int = Field(10, ge=0, description="Simulated time per further word.")
    tool_calls: dict[str, ScriptedToolCall] = Field(
        default_factory=dict,
        description="Trigger word (case-insensitive, whole word) -> client tool to call before replying.",
    )
    tool_timeout_ms: int = Field(
        5000,
        ge=0,
        description="How long to wait for a client_tool_result; then {{tool_result}} is 'unavailable'.",
    )


class ScriptedLlm(Node[ScriptedLlmParams]):
    """Streams scripted replies to user turns, in each turn's scope; calls client tools on trigger words."""

    summary = "scripted replies streamed word by word (deterministic, no model)"
    params_model = ScriptedLlmParams
    turns = Input(UserTurnFrame, doc="user turns, each in its reply scope")
    events = Input(
        ControlFrame, required=False, doc="conversation_started (dynamic variables), client_tool_result"
    )
    text = Output(ReplyTextFrame, doc="reply text: start / delta / stop")
    # Named before tool calls existed; the input above already owns the name ``events``.
    errors = Output(ControlFrame, doc="error events (e.g. a missing dynamic variable) and client_tool_call")

    async def run(self) -> None:
        self._vars: dict[str, object] = {}
        self._n = 0
        self._call_ids = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, object]]] = {}
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._event_loop())
            tg.create_task(self._turn_loop())

    async def _event_loop(self) -> None:
        async for ev in self.events:
            if ev.kind == "conversation_started":
                dv = ev.data.get("dynamic_variables")
                self._vars = dict(dv) if isinstance(dv, dict) else {}
                if self.params.first_message:
                    scope = self.ctx.scopes.open("reply")
                    await self.ctx.scopes.run_in(scope, self._speak(self.params.first_message, scope))
            elif ev.kind == "client_tool_result":
                waiter = self._waiting.pop(str(ev.data.get("tool_call_id")), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(ev.data)

    async def _turn_loop(self) -> None:
        async for turn in self.turns:
            await self.ctx.scopes.run_in(turn.scope, self._answer(turn))

    def _next_reply(self, turn: UserTurnFrame) -> str:
        if self.params.echo or not self.params.replies:
            return f"You said: {turn.text}"
        reply = self.params.replies[self._n % len(self.params.replies)]
        self._n += 1
        return reply

    def _tool_for(self, text: str) -> ScriptedToolCall | None:
        words = {w.lower() for w in re.findall(r"\w+", text)}
        for trigger, spec in self.params.tool_calls.items():
            if trigger.lower() in words:
                return spec
        return None

    async def _answer(self, turn: UserTurnFrame) -> None:
        spec = self._tool_for(turn.text)
        if spec is None:
            await self._speak(self._next_reply(turn), turn.scope)
            return
        result = await self._call_tool(spec, turn.scope)
        if spec.reply:
            await self._speak(spec.reply, turn.scope, {"tool_result": result})
        else:
            await self._speak(self._next_reply(turn), turn.scope)

    async def _call_tool(self, spec: ScriptedToolCall, scope: int) -> str:
        """Ask the client to run a tool and wait (on the session clock) for its result."""
        call_id = f"tool_call_{next(self._call_ids)}"
        params: dict[str, Any] = {}
        for key, value in spec.parameters.items():
            params[key] = await self._fill(value) if isinstance(value, str) else value
        waiter: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = waiter
        timer = asyncio.ensure_future(self.ctx.clock.sleep(self.params.tool_timeout_ms / 1000))
        try:
            await self.errors.send(
                ControlFrame(
                    "client_tool_call",
                    {"tool_name": spec.tool_name, "tool_call_id": call_id, "parameters": params},
                    scope=scope,
                )
            )
            pending: set[asyncio.Future[Any]] = {waiter, timer}
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            self._waiting.pop(call_id, None)
        if not waiter.done():
            waiter.cancel()
            self.ctx.logger.info("no client_tool_result for %s (%s) in time", call_id, spec.tool_name)
            return "unavailable"  # reads naturally in a reply template; the log says which call it was
        return str(waiter.result().get("result", ""))

    async def _fill(self, text: str, extra: dict[str, object] | None = None) -> str:
        return await fill_variables(text, {**self._vars, **(extra or {})}, self.errors)

    async def _speak(self, reply: str, scope: int, extra: dict[str, object] | None = None) -> None:
        clock = self.ctx.clock
        text = await self._fill(reply, extra)
        await clock.sleep(self.params.first_token_ms / 1000)
        await self.text.send(ReplyTextFrame("", kind="start", scope=scope))
        words = re.findall(r"\S+\s*", text)
        for i, word in enumerate(words):
            if i:
                await clock.sleep(self.params.word_ms / 1000)
            await self.text.send(ReplyTextFrame(word, kind="delta", scope=scope))
        await self.text.send(ReplyTextFrame(text, kind="stop", scope=scope))
