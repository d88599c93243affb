"""Per-conversation protocol state shared by the transport and protocol_out nodes of one session.

Both nodes write to the same socket and number events from the same counter, so they share this
one object (kept in the session's attachments). Every send goes through :meth:`send`, which
enforces the protocol's first rule — ``conversation_initiation_metadata`` first and exactly once —
and a send deadline, so a client that stops reading ends its own session instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from ah.runtime.connection import Connection, ConnectionClosed
from ah.runtime.node import NodeContext

log = logging.getLogger("ah.elevenlabs")

KEY = "elevenlabs.protocol"


class ClientNotReading(Exception):
    pass


class ProtocolState:
    def __init__(self, connection: Connection, *, send_timeout_s: float = 10.0) -> None:
        self.connection = connection
        self.conversation_id = f"conv_{uuid.uuid4().hex[:20]}"
        self.send_timeout_s = send_timeout_s
        self.started = asyncio.Event()
        self.text_only = False
        self.last_rtt_ms: int | None = None
        self.interrupted_event_id = 0
        self._next_event_id = 1
        self._lock = asyncio.Lock()
        self.sent_messages = 0
        self.closing = False

    @classmethod
    def of(cls, ctx: NodeContext) -> ProtocolState:
        """The conversation's state, created on first use by whichever node asks first."""
        state = ctx.attachments.get(KEY)
        if state is None:
            connection = ctx.attachments.get("connection")
            if connection is None:
                raise RuntimeError(
                    "no client connection attached to this session; ElevenLabs protocol nodes run "
                    "under `ah run` (the server attaches the WebSocket)"
                )
            state = cls(connection)
            ctx.attachments[KEY] = state
            # The server calls this when a node crashes, so the client reads why before the close.
            ctx.attachments["report_failure"] = state.report_failure
        assert isinstance(state, ProtocolState)
        return state

    def next_event_id(self) -> int:
        eid = self._next_event_id
        self._next_event_id += 1
        return eid

    async def send(self, message: dict[str, Any]) -> bool:
        """Send one server message. Returns False when the client has gone (the caller just stops)."""
        if message.get("type") != "conversation_initiation_metadata" and not self.started.is_set():
            await self.started.wait()
        if self.closing or self.connection.closed:
            return False
        text = json.dumps(message, separators=(",", ":"))
        try:
            async with self._lock:
                if self.closing or self.connection.closed:
                    return False
                async with asyncio.timeout(self.send_timeout_s):
                    await self.connection.send(text)
        except ConnectionClosed:
            return False
        except TimeoutError:
            log.warning(
                "conversation %s: client not reading for %g s; closing",
                self.conversation_id,
                self.send_timeout_s,
            )
            await self.close(
                1008, f"client is not reading (a send was blocked for {self.send_timeout_s:g} s)"
            )
            return False
        self.sent_messages += 1
        return True

    async def error(self, error_type: str, message: str, code: int = 1008) -> bool:
        return await self.send(
            {"type": "error", "error_event": {"code": code, "message": message, "error_type": error_type}}
        )

    async def report_failure(self, reason: str) -> None:
        if self.started.is_set():
            await self.error("unknown", reason, 1011)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closing:
            return
        self.closing = True
        try:
            await self.connection.close(code, reason[:120])
        except Exception:  # closing an already broken socket
            log.debug("close failed", exc_info=True)
