"""``transport.elevenlabs``: the client side of an ElevenLabs Agents conversation, as frames.

Set-up performs the handshake: read ``conversation_initiation_client_data``, apply the overrides
this graph allows to the nodes they target, answer ``conversation_initiation_metadata`` (first and
exactly once). Then every client message becomes a frame, every malformed one an ``error`` event
that leaves the session running, and pings measure the round trip for ``ping_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from pydantic import Field

from ah.nodes.elevenlabs.messages import (
    ClientMessage,
    ClientToolResult,
    ContextualUpdate,
    ConversationInitiation,
    EnclaveSetup,
    Feedback,
    McpToolApproval,
    MultimodalMessage,
    Pong,
    ProtocolError,
    UserActivity,
    UserAudioChunk,
    UserMessage,
    parse_client_message,
)
from ah.nodes.elevenlabs.state import ProtocolState
from ah.runtime.connection import ConnectionClosed
from ah.runtime.sdk import AudioFrame, ControlFrame, Node, Output, Params, UserTurnFrame

AUDIO_FORMAT = "pcm_16000"
# Client-side switches that change only what the client receives; always allowed.
MAX_EARLY_ERRORS = 20  # errors kept for a client that misbehaves before its initiation message
CLIENT_SIDE_OVERRIDES = {"text_only", "conversation.text_only", "conversation.client_events"}


class TransportParams(Params):
    overrides: dict[str, str] = Field(
        default_factory=dict,
        description="Which client overrides this agent allows, and where each goes: "
        "{'agent.prompt.prompt': 'llm.system_prompt', 'agent.first_message': 'llm.first_message', "
        "'agent.language': 'stt.language', 'tts.voice_id': 'tts.voice'}. Any other override is refused "
        "with an override_error, as ElevenLabs does for agents that do not enable it.",
    )
    init_timeout_s: float = Field(10.0, gt=0, description="How long to wait for the client's first message.")
    ping_interval_s: float = Field(5.0, ge=0, description="Seconds between pings (0: no pings).")
    send_timeout_s: float = Field(10.0, gt=0, description="A client that reads nothing this long is closed.")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif not isinstance(value, dict):
        out[prefix] = value


class ElevenLabsTransport(Node[TransportParams]):
    """Reads the client's messages: user audio, typed messages, context, tool results, feedback."""

    summary = "ElevenLabs Agents WebSocket, client → graph"
    params_model = TransportParams
    audio = Output(AudioFrame, doc="user audio, 16 kHz mono PCM16, as the client streams it")
    user_text = Output(UserTurnFrame, doc="typed user turns (user_message)")
    events = Output(
        ControlFrame,
        doc="conversation_started (overrides, dynamic_variables, text_only), contextual_update, "
        "user_activity, client_tool_result, feedback",
    )

    async def setup(self) -> None:
        self.state = ProtocolState.of(self.ctx)
        self.state.send_timeout_s = self.params.send_timeout_s
        self._gone = False
        self._pending: list[ClientMessage] = []
        self._notes: list[tuple[str, str]] = []  # errors to report once the metadata is out
        self._notes_dropped = 0
        self._init = ConversationInitiation(type="conversation_initiation_client_data")
        self._carry = b""
        self._odd_reported = False
        self._pings: dict[int, float] = {}
        conn = self.state.connection
        try:
            async with asyncio.timeout(self.params.init_timeout_s):
                while True:
                    raw = await conn.recv()
                    try:
                        msg = parse_client_message(raw)
                    except ProtocolError as exc:
                        self._note(exc.error_type, exc.message)
                        continue
                    if isinstance(msg, EnclaveSetup):
                        continue
                    if isinstance(msg, ConversationInitiation):
                        self._init = msg
                        break
                    # A client that starts talking without the initiation message still gets a
                    # conversation (with the agent's defaults) and is told why; its audio is kept.
                    kind = "user_audio_chunk" if isinstance(msg, UserAudioChunk) else msg.type
                    self._note(
                        "invalid_message",
                        f"received {kind} before conversation_initiation_client_data; "
                        "the conversation started with the agent's defaults",
                    )
                    self._pending.append(msg)
                    break
        except TimeoutError:
            self._gone = True
            await self.state.close(
                1008, f"no conversation_initiation_client_data within {self.params.init_timeout_s:g} s"
            )
            return
        except ConnectionClosed:
            self._gone = True
            return
        refused = self._apply_overrides(self._init)
        self.state.text_only = self._init.text_only
        await self.state.send(
            {
                "type": "conversation_initiation_metadata",
                "conversation_initiation_metadata_event": {
                    "conversation_id": self.state.conversation_id,
                    "agent_output_audio_format": AUDIO_FORMAT,
                    "user_input_audio_format": AUDIO_FORMAT,
                },
            }
        )
        self.state.started.set()
        if refused:
            await self.state.error("override_error", refused)
            await self.state.close(1008, refused)
            self._gone = True
            return
        for error_type, message in self._notes:
            await self.state.error(error_type, message)
        if self._notes_dropped:
            await self.state.error(
                "invalid_message",
                f"{self._notes_dropped} more invalid message(s) before "
                "conversation_initiation_client_data were ignored",
            )

    def _note(self, error_type: str, message: str) -> None:
        """Keep an error to report once the metadata is out; a bounded number of them."""
        if len(self._notes) < MAX_EARLY_ERRORS:
            self._notes.append((error_type, message))
        else:
            self._notes_dropped += 1

    def _apply_overrides(self, init: ConversationInitiation) -> str:
        """Apply allowed overrides to their nodes; return the refusal message for the first one that is not."""
        flat: dict[str, Any] = {}
        _flatten("", init.conversation_config_override, flat)
        updates: dict[str, dict[str, Any]] = {}
        for path, value in flat.items():
            if path in CLIENT_SIDE_OVERRIDES or value is None:
                continue
            target = self.params.overrides.get(path)
            if target is None:
                return f"Override for field '{path}' is not allowed by this agent's config"
            node_id, _, param = target.partition(".")
            updates.setdefault(node_id, {})[param] = value
        for node_id, params in updates.items():
            try:
                self.ctx.override_params(node_id, params)
            except ValueError as exc:
                return f"invalid override: {exc}"
        return ""

    async def run(self) -> None:
        if self._gone:
            return
        init = self._init
        await self.events.send(
            ControlFrame(
                "conversation_started",
                {
                    "conversation_id": self.state.conversation_id,
                    "dynamic_variables": dict(init.dynamic_variables),
                    "text_only": init.text_only,
                    "user_id": init.user_id,
                    "custom_llm_extra_body": dict(init.custom_llm_extra_body),
                },
            )
        )
        pinger = (
            asyncio.get_running_loop().create_task(self._ping_loop()) if self.params.ping_interval_s else None
        )
        try:
            for msg in self._pending:
                await self._dispatch(msg)
            conn = self.state.connection
            while True:
                try:
                    raw = await conn.recv()
                except ConnectionClosed:
                    break
                try:
                    msg = parse_client_message(raw)
                except ProtocolError as exc:
                    await self.state.error(exc.error_type, exc.message)
                    continue
                await self._dispatch(msg)
        finally:
            if pinger is not None:
                pinger.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pinger
        # The client has gone: nothing the graph still does can reach anyone.
        self.ctx.request_stop()

    async def _dispatch(self, msg: ClientMessage) -> None:
        if isinstance(msg, UserAudioChunk):
            pcm = self._carry + msg.pcm
            self._carry = b""
            if len(pcm) % 2:
                pcm, self._carry = pcm[:-1], pcm[-1:]
                if not self._odd_reported:
                    self._odd_reported = True
                    await self.state.error(
                        "value_error",
                        "user_audio_chunk has an odd number of bytes (PCM16 is 2 bytes a sample); the last "
                        "byte is carried over to the next chunk",
                    )
            if pcm:
                await self.audio.send(AudioFrame(pcm, 16000))
        elif isinstance(msg, Pong):
            sent = self._pings.pop(msg.event_id, None)
            if sent is not None:
                self.state.last_rtt_ms = max(1, round((self.ctx.clock.now() - sent) * 1000))
        elif isinstance(msg, UserMessage):
            await self.user_text.send(UserTurnFrame(msg.text, typed=True))
        elif isinstance(msg, MultimodalMessage):
            text = (msg.text or {}).get("text")
            if isinstance(text, str) and text:
                await self.user_text.send(UserTurnFrame(text, typed=True))
        elif isinstance(msg, ContextualUpdate | UserActivity | ClientToolResult | Feedback):
            await self.events.send(ControlFrame(msg.type, msg.model_dump(exclude={"type"})))
        elif isinstance(msg, ConversationInitiation):
            await self.state.error(
                "invalid_message", "conversation_initiation_client_data may be sent only once; ignored"
            )
        elif isinstance(msg, EnclaveSetup | McpToolApproval):
            pass

    async def _ping_loop(self) -> None:
        clock = self.ctx.clock
        while True:
            await clock.sleep(self.params.ping_interval_s)
            eid = self.state.next_event_id()
            self._pings[eid] = clock.now()
            if len(self._pings) > 20:  # a client that never pongs must not grow this map
                self._pings.pop(next(iter(self._pings)))
            if not await self.state.send(
                {"type": "ping", "ping_event": {"event_id": eid, "ping_ms": self.state.last_rtt_ms}}
            ):
                return
