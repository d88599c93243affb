"""Cancellation scopes: one per agent reply, the unit that barge-in cancels.

A reply (one LLM generation and every frame derived from it) runs under a scope id. Frames carry
that id. Cancelling the scope:

* cancels the tasks registered to it (the LLM stream, the TTS synthesis of that reply),
* purges its frames from every channel of the session, and
* makes every later send of a frame of that scope a counted no-op,

so no frame of a cancelled scope is delivered after :meth:`ScopeRegistry.cancel` returns. Pausing a
scope holds its frames where they are (channels skip them, producers block on backpressure);
resuming lets them flow again from where they stopped. This is LiveKit's ``SpeechHandle`` and
Trio's cancel scope made into data that travels with the frames.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ah.runtime.frames import NO_SCOPE

T = TypeVar("T")


class ScopeState(enum.Enum):
    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    DONE = "done"


class ScopeListener(Protocol):
    """What a channel must offer so that scope changes reach it."""

    def purge_scope(self, scope: int) -> int: ...

    def scope_state_changed(self) -> None: ...


@dataclass(slots=True)
class Scope:
    id: int
    label: str
    parent: int
    state: ScopeState = ScopeState.ACTIVE
    opened_at: float = 0.0
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    purged: int = 0


class ScopeCancelled(Exception):
    """Raised by :meth:`ScopeRegistry.run_in` callers who asked to see cancellation (``raise_on_cancel``)."""


class ScopeRegistry:
    """The scopes of one session. Only the session's own event loop touches it."""

    def __init__(self, now: Callable[[], float] | None = None) -> None:
        self._ids = itertools.count(1)
        self._scopes: dict[int, Scope] = {}
        # Hot-path lookups: channels check these sets for every frame that carries a scope.
        self.cancelled: set[int] = set()
        self.paused: set[int] = set()
        self._listeners: list[ScopeListener] = []
        self._now = now or (lambda: 0.0)
        self._observers: list[Callable[[Scope], None]] = []

    # -- wiring ------------------------------------------------------------------------------------
    def attach(self, listener: ScopeListener) -> None:
        self._listeners.append(listener)

    def observe(self, callback: Callable[[Scope], None]) -> None:
        """Call ``callback(scope)`` after every state change (tracing, protocol events)."""
        self._observers.append(callback)

    def release(self) -> None:
        """Forget every listener, observer and scope once the session is over: they are bound methods of
        the session's nodes and observers, which hold this registry, so they form a cycle."""
        self._listeners.clear()
        self._observers.clear()
        self._scopes.clear()

    # -- lifecycle -----------------------------------------------------------------------------------
    def open(self, label: str = "reply", parent: int = NO_SCOPE) -> int:
        """A new scope. A child of a cancelled scope is born cancelled: it derives from a dead reply."""
        sid = next(self._ids)
        self._scopes[sid] = Scope(sid, label, parent, opened_at=self._now())
        if parent in self.cancelled:
            self._scopes[sid].state = ScopeState.CANCELLED
            self.cancelled.add(sid)
        return sid

    def get(self, scope: int) -> Scope | None:
        return self._scopes.get(scope)

    def state(self, scope: int) -> ScopeState:
        s = self._scopes.get(scope)
        return s.state if s is not None else ScopeState.DONE

    def live(self, label: str | None = "reply") -> list[int]:
        """Scopes still active or paused (an agent reply still being produced or heard)."""
        return [
            s.id
            for s in self._scopes.values()
            if s.state in (ScopeState.ACTIVE, ScopeState.PAUSED) and (label is None or s.label == label)
        ]

    def is_cancelled(self, scope: int) -> bool:
        return scope in self.cancelled

    def cancel(self, scope: int) -> int:
        """Cancel a scope (and its children). Returns how many queued frames were purged.

        Idempotent; cancelling an unknown scope does nothing. A finished (``DONE``) scope can still be
        cancelled: finishing marks the end of generation, but its audio may still be queued when the
        user barges in, and that audio must go.
        """
        s = self._scopes.get(scope)
        if s is None or s.state is ScopeState.CANCELLED:
            return 0
        s.state = ScopeState.CANCELLED
        self.cancelled.add(scope)
        self.paused.discard(scope)
        for task in list(s.tasks):
            task.cancel()
        purged = 0
        for listener in self._listeners:
            purged += listener.purge_scope(scope)
        s.purged = purged
        for listener in self._listeners:
            listener.scope_state_changed()
        for child in [c.id for c in self._scopes.values() if c.parent == scope]:
            purged += self.cancel(child)
        self._notify(s)
        return purged

    def pause(self, scope: int) -> bool:
        s = self._scopes.get(scope)
        if s is None or s.state is not ScopeState.ACTIVE:
            return False
        s.state = ScopeState.PAUSED
        self.paused.add(scope)
        self._notify(s)
        return True

    def resume(self, scope: int) -> bool:
        s = self._scopes.get(scope)
        if s is None or s.state is not ScopeState.PAUSED:
            return False
        s.state = ScopeState.ACTIVE
        self.paused.discard(scope)
        for listener in self._listeners:
            listener.scope_state_changed()
        self._notify(s)
        return True

    def finish(self, scope: int) -> None:
        """Mark a scope's reply complete. Its frames still queued keep flowing."""
        s = self._scopes.get(scope)
        if s is not None and s.state in (ScopeState.ACTIVE, ScopeState.PAUSED):
            was_paused = s.state is ScopeState.PAUSED
            s.state = ScopeState.DONE
            self.paused.discard(scope)
            if was_paused:
                for listener in self._listeners:
                    listener.scope_state_changed()
            self._notify(s)

    def _notify(self, s: Scope) -> None:
        for cb in self._observers:
            cb(s)

    # -- work inside a scope --------------------------------------------------------------------------
    async def run_in(self, scope: int, work: Coroutine[Any, Any, T]) -> T | None:
        """Run ``work`` as a task that a cancel of ``scope`` stops.

        Returns the result, or ``None`` when the scope was cancelled (before or during the work). A
        cancellation of the caller itself (session shutdown) still propagates as usual.
        """
        s = self._scopes.get(scope)
        if scope == NO_SCOPE or s is None:
            return await work
        if s.state is ScopeState.CANCELLED:
            work.close()
            return None
        task = asyncio.get_running_loop().create_task(work)
        s.tasks.add(task)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The scope's cancel reads as "no result", unless the caller was itself cancelled in the
            # same tick: swallowing that would leave it running on when its task group waits for it.
            if task.cancelled() and scope in self.cancelled and not _caller_cancelling():
                return None
            task.cancel()  # the caller was cancelled: take the scope's task down with it
            raise
        finally:
            s.tasks.discard(task)

    def spawn(self, scope: int, work: Awaitable[Any]) -> asyncio.Task[Any]:
        """Start ``work`` in the background under ``scope``; a cancel of the scope cancels it."""

        async def _wrap() -> None:
            await work

        task = asyncio.get_running_loop().create_task(_wrap())
        s = self._scopes.get(scope)
        if s is not None:
            if s.state is ScopeState.CANCELLED:
                if isinstance(work, Coroutine):
                    work.close()  # it will never run; closing it avoids a "never awaited" warning
                task.cancel()
            else:
                s.tasks.add(task)
                task.add_done_callback(s.tasks.discard)
        return task


def _caller_cancelling() -> bool:
    """Whether the running task is being cancelled. A function, not a local: a local holding the task
    in a frame that a CancelledError's traceback keeps makes a cycle (task -> error -> frame -> task)."""
    me = asyncio.current_task()
    return me is not None and me.cancelling() > 0
