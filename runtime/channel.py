"""Bounded channels: the edges of a graph.

Why not ``asyncio.Queue`` or anyio streams: an edge must also purge the frames of a cancelled scope,
skip (hold) the frames of a paused one, count every frame it does not deliver, and close when its
last producer ends. Doing that on top of a queue costs a second structure and a second lookup per
frame; anyio's memory streams cost ~4x a queue per hop (ARCHITECTURE.md §3). This is a deque plus
waiter futures, so a hop is one append, one popleft and at most one wake-up.

Every channel is bounded. Its policy says what a full channel does:

* ``block`` (default, lossless): the producer waits, so backpressure reaches the source;
* ``drop_oldest`` (live audio that must not lag): the oldest frame is dropped and counted.

No frame is ever dropped silently: each one not delivered is counted in :class:`ChannelStats`.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from ah.runtime.frames import Frame

if TYPE_CHECKING:
    from ah.runtime.scopes import ScopeRegistry

F = TypeVar("F", bound=Frame)


class EdgePolicy(str, enum.Enum):
    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"


class EndOfStream(Exception):
    """Every producer of the channel has finished and everything queued has been delivered."""


class ChannelClosed(RuntimeError):
    """A producer sent after it had closed its side: a bug in the node, not a runtime condition."""


@dataclass(slots=True)
class ChannelStats:
    sent: int = 0
    delivered: int = 0
    dropped_overflow: int = 0  # drop_oldest edges only
    discarded_cancelled: int = 0  # frames of a cancelled scope (purged, or sent after the cancel)
    discarded_unconsumed: int = 0  # the consumer had already finished
    peak_depth: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Channel(Generic[F]):
    __slots__ = (
        "_buf",
        "_cancelled",
        "_capacity",
        "_closed",
        "_detached",
        "_getters",
        "_loop",
        "_paused",
        "_producers",
        "_putters",
        "name",
        "policy",
        "stats",
    )

    def __init__(
        self,
        capacity: int = 32,
        policy: EdgePolicy = EdgePolicy.BLOCK,
        *,
        scopes: ScopeRegistry | None = None,
        producers: int = 1,
        name: str = "",
        hold_paused: bool = True,
    ) -> None:
        if capacity < 1:
            raise ValueError("channel capacity must be at least 1")
        self._buf: deque[F] = deque()
        self._capacity = capacity
        self.policy = policy
        self.name = name
        self.stats = ChannelStats()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()
        self._producers = producers
        self._closed = producers == 0
        self._detached = False
        if scopes is not None:
            # A channel that does not hold paused frames (an input that runs ahead) sees no scope paused.
            self._paused = scopes.paused if hold_paused else set()
            self._cancelled = scopes.cancelled
            scopes.attach(self)
        else:
            self._paused = set()
            self._cancelled = set()

    # -- observation ---------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self._buf)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"<Channel {self.name} {len(self._buf)}/{self._capacity} {self.policy.value}>"

    # -- producer side -------------------------------------------------------------------------------
    async def put(self, frame: F) -> None:
        scope = frame.scope
        # A discarded send still yields once: a producer whose every send is a no-op (its consumer
        # is gone, its scope cancelled) would otherwise never suspend, so its own cancellation (the
        # session ending on a failed node) could not land and it would starve every other task.
        if scope and scope in self._cancelled:
            self.stats.discarded_cancelled += 1
            await asyncio.sleep(0)
            return
        if self._detached:
            self.stats.discarded_unconsumed += 1
            await asyncio.sleep(0)
            return
        if self._closed:
            raise ChannelClosed(f"send on channel {self.name!r} after its producers closed it")
        buf = self._buf
        if len(buf) >= self._capacity:
            if self.policy is EdgePolicy.DROP_OLDEST:
                buf.popleft()
                self.stats.dropped_overflow += 1
            else:
                while len(buf) >= self._capacity:
                    await self._wait(self._putters)
                    if scope and scope in self._cancelled:
                        self.stats.discarded_cancelled += 1
                        self._wake(self._putters)  # pass the free slot on
                        return
                    if self._detached:
                        self.stats.discarded_unconsumed += 1
                        return
        buf.append(frame)
        stats = self.stats
        stats.sent += 1
        if len(buf) > stats.peak_depth:
            stats.peak_depth = len(buf)
        if self._getters:
            self._wake(self._getters)

    def close_producer(self) -> None:
        """One producer is done. When the last one is, consumers get :class:`EndOfStream` after the queue."""
        if self._producers > 0:
            self._producers -= 1
        if self._producers == 0 and not self._closed:
            self._closed = True
            self._wake_all(self._getters)

    # -- consumer side -------------------------------------------------------------------------------
    async def get(self) -> F:
        buf = self._buf
        while True:
            if buf:
                frame = buf[0]
                scope = frame.scope
                if not scope or scope not in self._paused:
                    buf.popleft()
                    self.stats.delivered += 1
                    if self._putters:
                        self._wake(self._putters)
                    return frame
                held = self._take_unpaused()
                if held is not None:
                    return held
            elif self._closed:
                raise EndOfStream(self.name)
            # _wait(), inlined: one coroutine frame less to create and resume on every hop that
            # waits (~0.1 µs of ~4; experiments/engine_bench.py). Same semantics as _wait.
            getters = self._getters
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            getters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    Channel._wake(getters)  # woken and cancelled at once: pass the wake-up on
                else:
                    try:
                        getters.remove(fut)
                    except ValueError:
                        pass
                raise

    def get_nowait(self) -> F | None:
        """The next deliverable frame, or ``None`` if there is none right now."""
        if self._buf:
            frame = self._take_unpaused()
            if frame is not None:
                return frame
        return None

    def detach(self) -> None:
        """The consumer has finished: discard (and count) what is queued and what comes later."""
        self._detached = True
        self.stats.discarded_unconsumed += len(self._buf)
        self._buf.clear()
        self._wake_all(self._putters)

    # -- scope listener -----------------------------------------------------------------------------
    def purge_scope(self, scope: int) -> int:
        buf = self._buf
        before = len(buf)
        if before == 0:
            return 0
        kept = [f for f in buf if f.scope != scope]
        removed = before - len(kept)
        if removed:
            buf.clear()
            buf.extend(kept)
            self.stats.discarded_cancelled += removed
            for _ in range(removed):
                if not self._wake(self._putters):
                    break
        return removed

    def scope_state_changed(self) -> None:
        self._wake_all(self._getters)
        if len(self._buf) < self._capacity:
            self._wake_all(self._putters)

    # -- internals -------------------------------------------------------------------------------------
    def _take_unpaused(self) -> F | None:
        """Deliver the first frame whose scope is not paused; held frames keep their place."""
        paused = self._paused
        for i, frame in enumerate(self._buf):
            if not frame.scope or frame.scope not in paused:
                del self._buf[i]
                self.stats.delivered += 1
                if self._putters:
                    self._wake(self._putters)
                return frame
        return None

    @staticmethod
    async def _wait(waiters: deque[asyncio.Future[None]]) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # We were woken and cancelled at once: hand the wake-up to the next waiter.
                Channel._wake(waiters)
            else:
                try:
                    waiters.remove(fut)
                except ValueError:
                    pass
            raise

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]]) -> bool:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return True
        return False

    @staticmethod
    def _wake_all(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
