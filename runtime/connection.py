"""What a transport node needs from a client connection, whatever the server library.

The server attaches one per session (``ctx.attachments["connection"]``); a protocol's nodes read and
write it. Keeping it this small lets tests drive a transport node without a socket, and lets a
second server (telephony, WebRTC) reuse the same nodes.
"""

from __future__ import annotations

from typing import Protocol


class ConnectionClosed(Exception):
    """The peer went away (or we closed); ``code`` and ``reason`` as in a WebSocket close."""

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed ({code}) {reason}".strip())


class Connection(Protocol):
    @property
    def closed(self) -> bool: ...

    async def recv(self) -> str | bytes:
        """The next message; raises :class:`ConnectionClosed` when the peer has gone."""
        ...

    async def send(self, message: str) -> None:
        """Send a text message; raises :class:`ConnectionClosed` if the peer has gone."""
        ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...
