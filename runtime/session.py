"""A session: one running instance of a graph (one conversation).

Every node runs as a task in the session's task group, so the session owns their lifetimes
(structured concurrency): a node that raises ends the session with a ``node_failed`` event naming
the node and the exception, the other nodes are cancelled, and nothing leaks into another session.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
from opentelemetry import trace
from pydantic import ValidationError

from ah.runtime.channel import Channel, EdgePolicy
from ah.runtime.clock import Clock, MonotonicClock
from ah.runtime.frames import Frame
from ah.runtime.graph_loader import Graph, ResolvedEdge
from ah.runtime.node import Node, NodeContext, SessionEvent
from ah.runtime.observe import FrameTap, SessionObserver
from ah.runtime.ports import InputPort, OutputPort, PortSpec
from ah.runtime.scopes import ScopeRegistry

log = logging.getLogger("ah.session")


@functools.lru_cache(maxsize=64)
def _setup_order(nodes: tuple[str, ...], edges: tuple[tuple[str, str], ...]) -> tuple[str, ...]:
    """Once per graph, not per session: a networkx graph caches views of itself (a cycle per session)."""
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from(edges)
    position = {nid: i for i, nid in enumerate(nodes)}
    return tuple(nx.lexicographical_topological_sort(g, key=lambda n: position[n]))


class NodeFailed(Exception):
    """A node raised; the session ends. Carries the node id so every report can name it."""

    def __init__(self, node_id: str, node_type: str, error: BaseException) -> None:
        self.node_id = node_id
        self.node_type = node_type
        self.error = error
        super().__init__(f"node {node_id!r} ({node_type}) failed: {type(error).__name__}: {error}")


@dataclass(slots=True)
class SessionResult:
    session_id: str
    ok: bool
    failure: NodeFailed | None = None
    cancelled: bool = False
    channels: dict[str, dict[str, int]] = field(default_factory=dict)
    duration_s: float = 0.0


class Session:
    """Wires a :class:`Graph` into nodes and channels and runs it to completion."""

    def __init__(
        self,
        graph: Graph,
        *,
        clock: Clock | None = None,
        session_id: str | None = None,
        attachments: Mapping[str, Any] | None = None,
        on_event: Callable[[SessionEvent], None] | None = None,
        tracer: trace.Tracer | None = None,
        observers: Sequence[SessionObserver] = (),
    ) -> None:
        self.graph = graph
        self.id = session_id or uuid.uuid4().hex[:16]
        self.clock: Clock = clock or MonotonicClock()
        self.scopes = ScopeRegistry(self.clock.now)
        self.attachments: dict[str, Any] = dict(attachments or {})
        self._set_up: set[str] = set()
        self._task: asyncio.Task[Any] | None = None
        self._stop_requested = False
        self._on_event = on_event
        self.observers = list(observers)
        self.events: list[SessionEvent] = []
        self.tracer = tracer or trace.get_tracer("ah")
        self.channels: dict[str, Channel[Any]] = {}
        self.nodes: dict[str, Node[Any]] = {}
        self._inputs_of: dict[str, list[Channel[Any]]] = {}
        self._outputs_of: dict[str, list[OutputPort[Any]]] = {}
        self._build()
        for observer in self.observers:
            observer.attach(self)

    # -- wiring ------------------------------------------------------------------------------------------
    def _build(self) -> None:
        """Two passes: one channel per input port (fan-in shares it), then output ports that fan out."""
        producers: dict[tuple[str, str], int] = {}
        first_edge: dict[tuple[str, str], ResolvedEdge] = {}
        for e in self.graph.edges:
            key = (e.dst, e.dst_port)
            producers[key] = producers.get(key, 0) + 1
            first_edge.setdefault(key, e)
        ports: dict[str, dict[str, InputPort[Any] | OutputPort[Any]]] = {}
        for nid, rnode in self.graph.nodes.items():
            ports[nid] = {}
            self._inputs_of[nid] = []
            for pname in rnode.cls.inputs:
                edge = first_edge.get((nid, pname))
                ch: Channel[Any] = Channel(
                    edge.capacity if edge else 1,
                    edge.policy if edge else EdgePolicy.BLOCK,
                    scopes=self.scopes,
                    producers=producers.get((nid, pname), 0),  # unconnected: closed from the start
                    name=f"{nid}.{pname}",
                    hold_paused=not rnode.cls.inputs[pname].runs_ahead,
                )
                self.channels[ch.name] = ch
                ports[nid][pname] = InputPort(pname, ch)
                self._inputs_of[nid].append(ch)
        for nid, rnode in self.graph.nodes.items():
            self._outputs_of[nid] = []
            for pname in rnode.cls.outputs:
                targets = [
                    self.channels[f"{e.dst}.{e.dst_port}"]
                    for e in self.graph.edges
                    if e.src == nid and e.src_port == pname
                ]
                spec = rnode.cls.outputs[pname]
                port: OutputPort[Any] = OutputPort(
                    pname, targets, self.scopes, self._tap_for(nid, rnode.type_name, spec)
                )
                ports[nid][pname] = port
                self._outputs_of[nid].append(port)
            ctx = NodeContext(
                session_id=self.id,
                node_id=nid,
                clock=self.clock,
                logger=logging.getLogger(f"ah.node.{nid}"),
                tracer=self.tracer,
                scopes=self.scopes,
                attachments=self.attachments,
                emit=self._make_emit(nid),
                override_params=self.override_params,
                request_stop=self.stop,
            )
            self.nodes[nid] = rnode.cls(rnode.params, ctx, ports[nid])

    def _tap_for(self, nid: str, node_type: str, spec: PortSpec) -> FrameTap | None:
        """The observers' callbacks for one output port, guarded: an observer never fails a session."""
        taps = [t for o in self.observers if (t := o.tap(nid, node_type, spec)) is not None]
        if not taps:
            return None

        def tap(frame: Frame) -> None:
            for t in taps:
                try:
                    t(frame)
                except Exception:
                    log.exception(
                        "session %s: observer failed on a frame from %s.%s", self.id, nid, spec.name
                    )

        return tap

    def setup_order(self) -> list[str]:
        """Sources first (topological order, ties in file order), so a transport node can apply a
        client's overrides to the nodes downstream of it before they are set up."""
        edges = tuple((e.src, e.dst) for e in self.graph.edges if not e.feedback)
        return list(_setup_order(tuple(self.graph.nodes), edges))

    def override_params(self, node_id: str, updates: Mapping[str, Any]) -> None:
        if node_id not in self.nodes:
            raise ValueError(f"no node {node_id!r} in graph {self.graph.name!r}")
        if node_id in self._set_up:
            raise ValueError(f"node {node_id!r} is already set up; overrides must come before")
        node = self.nodes[node_id]
        merged = {**node.params.model_dump(), **dict(updates)}
        try:
            node.params = type(node.params).model_validate(merged)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ValueError(f"{node_id}.{where}: {first['msg']}") from None

    def stop(self) -> None:
        """End the session cleanly from inside (a node) or outside (the server draining)."""
        self._stop_requested = True
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _make_emit(self, nid: str) -> Callable[[SessionEvent], None]:
        def emit(event: SessionEvent) -> None:
            if not event.node:
                event.node = nid
            self._emit(event)

        return emit

    def _emit(self, event: SessionEvent) -> None:
        self.events.append(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # an observer must not take the session down
                log.exception("session %s: event observer failed", self.id)
        for observer in self.observers:
            try:
                observer.on_event(event)
            except Exception:
                log.exception("session %s: observer failed on %s", self.id, event.kind)

    def release(self) -> None:
        """Cut the wiring of a session that has run, so reference counting frees it at once.

        A wired session is one big reference cycle: session -> nodes -> contexts (``emit``, ``stop``)
        -> session; ports, channels and the scope registry's observers point back at the nodes; each
        node's own task group, bound callbacks and cancelled tasks (whose tracebacks hold its frames)
        point back at the node. Left alone, an ended session (~0.25 MB, ~1,400 objects) waits for a
        full collection, and under 100 sessions each of those stalls every turn in flight for
        45-80 ms (experiments/capacity.py --stalls). Cut here, the server can make full collections
        rare without memory growing under churn. Read what you need (``events``, node state)
        before: afterwards the session is empty.
        """
        if self._task is not None:
            raise RuntimeError(f"session {self.id} is still running; release it after run() returns")
        for node in self.nodes.values():
            vars(node).clear()  # its context, ports, task groups and callbacks
        self.nodes.clear()
        self.channels.clear()
        self._inputs_of.clear()
        self._outputs_of.clear()
        self.scopes.release()
        self.observers.clear()
        self.attachments.clear()
        self._on_event = None

    # -- running -------------------------------------------------------------------------------------------
    async def _run_node(self, nid: str, node: Node[Any]) -> None:
        try:
            await node.run()
        except asyncio.CancelledError as cancelled:
            # The node's frames, and asyncio.TaskGroup's __aexit__ frame that holds this very exception,
            # hang off its traceback: cycles only a full collection frees (see release()). A cancelled
            # node's traceback says nothing anyone reads.
            cancelled.__traceback__ = None
            raise
        except Exception as exc:
            raise NodeFailed(nid, self.graph.nodes[nid].type_name, exc) from exc
        finally:
            for port in self._outputs_of[nid]:
                port.close()
            for ch in self._inputs_of[nid]:
                ch.detach()

    async def run(self) -> SessionResult:
        """Set up every node, then run them all until each has finished or one has failed."""
        t0 = time.perf_counter()
        self._emit(SessionEvent("session_started", data={"graph": self.graph.name, "session_id": self.id}))
        failure: NodeFailed | None = None
        cancelled = False
        try:
            self._task = asyncio.current_task()
            try:
                for nid in self.setup_order():
                    try:
                        await self.nodes[nid].setup()
                    except Exception as exc:
                        raise NodeFailed(nid, self.graph.nodes[nid].type_name, exc) from exc
                    self._set_up.add(nid)
                try:
                    async with asyncio.TaskGroup() as tg:
                        for nid, node in self.nodes.items():
                            tg.create_task(self._run_node(nid, node), name=f"{self.id}:{nid}")
                except BaseExceptionGroup as group:
                    failed = [e for e in group.exceptions if isinstance(e, NodeFailed)]
                    if not failed:
                        raise
                    failure = failed[0]
            except NodeFailed as exc:
                failure = exc
            except asyncio.CancelledError as stopped:
                stopped.__traceback__ = None  # the task group's frame holds it: a cycle (see _run_node)
                if not self._stop_requested:
                    cancelled = True
                    raise
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
        finally:
            self._task = None
            duration = time.perf_counter() - t0
            if failure is not None:
                cause = failure.error
                self._emit(
                    SessionEvent(
                        "node_failed",
                        node=failure.node_id,
                        data={
                            "type": failure.node_type,
                            "error": f"{type(cause).__name__}: {cause}",
                            "traceback": "".join(traceback.format_exception(cause)),
                        },
                    )
                )
                log.error("session %s: %s", self.id, failure)
            self._emit(
                SessionEvent(
                    "session_ended",
                    data={"ok": failure is None and not cancelled, "duration_s": round(duration, 6)},
                )
            )
        return SessionResult(
            self.id,
            failure is None,
            failure,
            cancelled,
            {name: ch.stats.as_dict() for name, ch in self.channels.items()},
            duration,
        )
