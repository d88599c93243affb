"""A websockets server connection seen through :class:`ah.runtime.connection.Connection`."""

from __future__ import annotations

import asyncio
import contextlib

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.protocol import State

from ah.runtime.connection import ConnectionClosed


def close_reason(text: str, limit: int = 123) -> str:
    """A WebSocket close reason is at most 123 bytes of UTF-8: cut ``text`` to fit, on a character."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "..."


class WebSocketConnection:
    def __init__(self, ws: ServerConnection, *, close_timeout_s: float = 5.0) -> None:
        self.ws = ws
        self.close_timeout_s = close_timeout_s

    @property
    def closed(self) -> bool:
        return self.ws.state in (State.CLOSING, State.CLOSED)

    async def recv(self) -> str | bytes:
        try:
            return await self.ws.recv()
        except WsClosed as exc:
            rcvd = exc.rcvd
            raise ConnectionClosed(rcvd.code if rcvd else None, rcvd.reason if rcvd else "") from None

    async def send(self, message: str) -> None:
        try:
            await self.ws.send(message)
        except WsClosed as exc:
            raise ConnectionClosed(exc.rcvd.code if exc.rcvd else None) from None

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and ``reason``; a peer that does not complete the closing handshake in
        ``close_timeout_s`` (one that stopped reading: websockets would wait on its full send buffer
        for ever) has its TCP connection aborted."""
        try:
            async with asyncio.timeout(self.close_timeout_s):
                await self.ws.close(code, close_reason(reason))
        except TimeoutError:
            with contextlib.suppress(Exception):
                self.ws.transport.abort()
