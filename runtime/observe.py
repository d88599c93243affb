"""Session observers: watch a running session from outside its nodes (tracing, metrics, test probes).

An observer sees three things, all of which the runtime already has, so no node needs to be
instrumented by hand:

* every frame a node sends on an output port it asked to watch (:meth:`SessionObserver.tap`);
  ports it does not ask for cost nothing, the ones it does cost one call per frame;
* every :class:`~ah.runtime.node.SessionEvent` (``on_event``);
* every change of a cancellation scope (through ``session.scopes.observe`` in ``attach``).

The runtime stays ignorant of what the frames mean: an observer interprets them. An observer that
raises is logged and otherwise ignored; it can never take a session down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ah.runtime.frames import Frame

if TYPE_CHECKING:
    from ah.runtime.node import SessionEvent
    from ah.runtime.ports import PortSpec
    from ah.runtime.session import Session

FrameTap = Callable[[Frame], None]


class SessionObserver(Protocol):
    def tap(self, node_id: str, node_type: str, port: PortSpec) -> FrameTap | None:
        """A callback for each frame sent on this output port, or ``None`` to leave it unwatched."""
        ...

    def attach(self, session: Session) -> None:
        """Called once the session is wired, before it runs (its clock, scopes and graph are ready)."""
        ...

    def on_event(self, event: SessionEvent) -> None: ...
