"""A worker's accept loop on the shared listening socket that steps aside while the worker is full.

Why: with ``ah run --workers N --max-sessions K`` every worker accepts from one kernel queue, and the
kernel hands a new connection to whichever worker accepts first, so a full worker would take it and
refuse it with 1013 while a sibling had room. This loop accepts only while

* this worker has room, or
* no sibling has room (then it accepts and refuses at once, so a connection never waits in the
  backlog unanswered when the whole server is full).

The rule is checked again before every ``accept()`` (reading the siblings' room in the shared
``OccupancyTable``), when this worker's own room changes, and, while it stands aside, every
``POLL_S``: a sibling that fills up or dies (the supervisor zeroes its slot) is noticed that fast. At
every moment some live worker accepts: one with room does, and if none has room, all do.

"Room" counts connections accepted and not yet known to be sessions or not (their HTTP request is
still on its way), so a burst of connections spreads over the workers instead of piling onto the
first one to wake.

It stands in for the ``asyncio.Server`` under a ``websockets`` server: connections it accepts are
handed to the event loop with ``connect_accepted_socket`` and the ``websockets`` protocol factory,
so the WebSocket handshake, ``process_request`` and the handlers are exactly those of ``ah run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from ah.server.occupancy import OccupancyTable

log = logging.getLogger("ah.server")

POLL_S = 0.02  # while standing aside: how often the siblings' room is read again
BEAT_S = 0.25  # otherwise: how often this worker's slot is rewritten (its heartbeat)
ACCEPT_BATCH = 64  # connections accepted per wake-up at most, so a burst does not starve the loop
# Out of file descriptors or buffers: wait before accepting again (as asyncio's own server does).
RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class GatedListener:
    """Accepts from ``sock`` for a ``websockets`` server while ``room()`` > 0 or no sibling has room.

    ``room`` is this worker's free session slots (sessions and connections in handshake already
    counted); ``adopted(connection)`` is called, synchronously, as each accepted connection gets its
    protocol object (from then on the server counts it in ``room``).
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        table: OccupancyTable,
        index: int,
        room: Callable[[], int],
        adopted: Callable[[asyncio.Protocol], None],
    ) -> None:
        self.sock = sock
        self.table = table
        self.index = index
        self._factory = protocol_factory
        self._room = room
        self._adopted = adopted
        self._loop = asyncio.get_running_loop()
        self._unadopted = 0  # accepted, protocol object not made yet: counts against room
        self._reading = False
        self._serving = False
        self._closed = False
        self._backoff: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None
        sock.setblocking(False)

    # -- what websockets' Server uses of an asyncio.Server -------------------------------------------------
    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._closed else (self.sock,)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._serving or self._closed:
            return
        self._serving = True
        self.update()
        self._watcher = asyncio.ensure_future(self._watch())

    def close(self) -> None:
        """Stop accepting; close this process's descriptor of the shared socket (siblings keep theirs)."""
        if self._closed:
            return
        self._closed = True
        self._serving = False
        self._stop_reading()
        if self._backoff is not None:
            self._backoff.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        self.table.publish(self.index, 0)
        self.sock.close()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks))

    # -- the gate ------------------------------------------------------------------------------------------
    def free(self) -> int:
        """Sessions this worker can still take, counting connections accepted and not yet adopted."""
        return self._room() - self._unadopted

    def should_accept(self) -> bool:
        return self._serving and (self.free() > 0 or not self.table.others_have_room(self.index))

    def update(self) -> None:
        """Publish this worker's room and accept or stand aside by the rule; call on every change."""
        if self._closed:
            return
        self.table.publish(self.index, self.free() if self._serving else 0)
        if self._backoff is not None:
            return
        if self.should_accept():
            self._start_reading()
        else:
            self._stop_reading()

    def _start_reading(self) -> None:
        if not self._reading:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.sock.fileno())
            self._reading = False

    def _on_readable(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if not self.should_accept():
                break
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break  # a sibling took it, or the queue is empty
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in RESOURCE_ERRORS:
                    raise
                log.error("accept failed (%s); accepting again in 1 s", exc.strerror or exc)
                self._stop_reading()
                self._backoff = self._loop.call_later(1.0, self._end_backoff)
                return
            conn.setblocking(False)
            self._unadopted += 1
            self.table.publish(self.index, self.free())  # siblings see the room shrink at once
            task = self._loop.create_task(self._adopt(conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.update()

    def _end_backoff(self) -> None:
        self._backoff = None
        self.update()

    async def _adopt(self, conn: socket.socket) -> None:
        made = False

        def factory() -> asyncio.Protocol:
            nonlocal made
            protocol = self._factory()
            made = True
            self._unadopted -= 1  # in the same step the server starts counting it: no gap, no double
            self._adopted(protocol)
            return protocol

        try:
            await self._loop.connect_accepted_socket(factory, conn)
        except Exception as exc:  # the client vanished between accept and adoption
            log.debug("could not adopt an accepted connection: %s", exc)
            with contextlib.suppress(OSError):
                conn.close()
            if not made:
                self._unadopted -= 1
            self.update()

    async def _watch(self) -> None:
        """Heartbeat while accepting; while standing aside, read the siblings' room every POLL_S."""
        while not self._closed:
            self.update()
            await asyncio.sleep(BEAT_S if self._reading else POLL_S)


def gate_websockets_server(ws_server: Any, listener_args: dict[str, Any]) -> GatedListener:
    """Make the (not yet awaited) ``websockets`` server accept through a ``GatedListener``.

    ``websockets.asyncio.server.serve`` builds its protocol factory inside a closure and passes it to
    ``loop.create_server``; we take that same factory (so every connection is set up exactly as
    ``serve`` would) and give the server our listener in place of an ``asyncio.Server``.
    """
    import inspect

    nonlocals = inspect.getclosurevars(ws_server.create_server).nonlocals
    factory = nonlocals.get("protocol_factory")
    if not callable(factory):
        raise RuntimeError(
            "this version of websockets builds its server differently; --workers with --max-sessions "
            "needs websockets' serve() to keep its protocol_factory (see ah/server/gate.py)"
        )
    listener = GatedListener(protocol_factory=factory, **listener_args)

    async def create_server() -> GatedListener:
        return listener

    ws_server.create_server = create_server
    return listener
