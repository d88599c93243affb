"""Playing scripts through a graph: in real time over a real server, or on a virtual clock.

``realtime=True`` starts the real server (:class:`~ah.server.app.AgentServer`) in this process on a
free port, loads the graph's models, and plays each script over a WebSocket, in real time, as a client
would. The server's sessions run on the monotonic clock the player uses too, so server-side decision
times and client-side arrival times are on one time line.

``realtime=False`` runs the graph as a session on a :class:`~ah.runtime.clock.VirtualClock` and
plays the script over an in-memory connection that speaks the same JSON protocol through the same
transport and protocol nodes. Provider latencies are the scripted nodes' params (``first_token_ms``,
``first_audio_ms``, ``latency_ms``); a ``stt.scripted`` node gets the script's transcript lines. Every
timestamp is exact and repeatable, and a conversation takes milliseconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as WsClosed

from ah.runtime.clock import MonotonicClock, VirtualClock
from ah.runtime.connection import ConnectionClosed
from ah.runtime.graph_loader import Graph, load_graph
from ah.runtime.node import SessionEvent
from ah.runtime.session import Session
from ah.sim.metrics import TurnMetrics, turn_metrics
from ah.sim.player import Player, Timeline
from ah.sim.script import Scenario, load_clip, load_scenario


@dataclass
class ScenarioResult:
    """One script played through one graph: the timeline and the per-turn metrics."""

    scenario: Scenario
    graph: str
    mode: str  # "realtime" | "virtual"
    timeline: Timeline
    turns: list[TurnMetrics]
    ok: bool = True
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.scenario,
            "category": self.scenario.category,
            "graph": self.graph,
            "mode": self.mode,
            "ok": self.ok,
            "error": self.error,
            "turns": [t.to_json() for t in self.turns],
            "timeline": self.timeline.to_json(),
        }


# -- an in-memory connection: the server's end and the client's end ----------------------------------------------
class _MemoryConnection:
    """The server side of an in-memory conversation (what ``transport.elevenlabs`` reads and writes)."""

    def __init__(self) -> None:
        self.to_server: asyncio.Queue[str | None] = asyncio.Queue()
        self.to_client: asyncio.Queue[str | None] = asyncio.Queue()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    async def recv(self) -> str | bytes:
        msg = await self.to_server.get()
        if msg is None:
            self._closed = True
            raise ConnectionClosed(1000, "client closed")
        return msg

    async def send(self, message: str) -> None:
        if self._closed:
            raise ConnectionClosed(1000, "closed")
        self.to_client.put_nowait(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self._closed:
            self._closed = True
            self.to_client.put_nowait(None)


class _MemoryLink:
    def __init__(self, conn: _MemoryConnection) -> None:
        self.conn = conn

    async def send(self, message: dict[str, Any]) -> None:
        if not self.conn.closed:
            self.conn.to_server.put_nowait(json.dumps(message))

    async def recv(self) -> dict[str, Any] | None:
        raw = await self.conn.to_client.get()
        return None if raw is None else dict(json.loads(raw))

    async def close(self) -> None:
        self.conn.to_server.put_nowait(None)
        self.conn.to_client.put_nowait(None)  # the client stops listening too


class _WebSocketLink:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, message: dict[str, Any]) -> None:
        try:
            await self.ws.send(json.dumps(message))
        except WsClosed:
            pass

    async def recv(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(await self.ws.recv()))
        except WsClosed:
            return None

    async def close(self) -> None:
        await self.ws.close()


def _server_events(events: Iterable[SessionEvent]) -> list[tuple[float, str, dict[str, Any]]]:
    out = []
    for e in events:
        if e.kind in ("turn", "interruption_sent", "smart_turn"):
            out.append((float(e.data.get("t", 0.0)), e.kind, {**e.data, "node": e.node}))
    return out


def scripted_variant(graph: Graph, scenario: Scenario) -> Graph:
    """``graph`` with each ``stt.scripted`` node given the script's transcript lines (served as its own agent)."""
    nodes = dict(graph.nodes)
    for nid, node in graph.nodes.items():
        if node.type_name == "stt.scripted":
            params = node.params.model_copy(update={"lines": scenario.stt_lines()})
            nodes[nid] = dataclasses.replace(node, params=params)
    return dataclasses.replace(graph, name=f"{graph.name}--{scenario.scenario}", nodes=nodes)


def _scripted(graph: Graph) -> bool:
    return any(n.type_name == "stt.scripted" for n in graph.nodes.values())


def _result(sc: Scenario, graph: Graph, mode: str, tl: Timeline, error: str = "") -> ScenarioResult:
    return ScenarioResult(sc, graph.name, mode, tl, turn_metrics(tl, sc.category), ok=not error, error=error)


# -- virtual time -------------------------------------------------------------------------------------------------
async def simulate_virtual(
    graph: Graph,
    scenario: Scenario,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    script_stt: bool = True,
) -> ScenarioResult:
    """Play ``scenario`` through ``graph`` on a virtual clock (exact, fast). ``overrides``: node -> params."""
    # Models load before the clock starts: a load on a thread would let virtual time run ahead of it.
    for node in graph.nodes.values():
        await node.cls.preload(node.params)
    clock = VirtualClock(auto_advance=True)
    conn = _MemoryConnection()
    session = Session(
        graph, clock=clock, attachments={"connection": conn, "agent_id": graph.name, "query": {}}
    )
    if script_stt:
        for nid, node in graph.nodes.items():
            if node.type_name == "stt.scripted":
                session.override_params(nid, {"lines": scenario.stt_lines()})
    for nid, params in (overrides or {}).items():
        session.override_params(nid, params)
    clips = [load_clip(scenario.audio_path(s)) for s in scenario.steps]
    player = Player(scenario, clips, _MemoryLink(conn), clock)
    task = asyncio.ensure_future(session.run())
    error = ""
    try:
        tl = await player.play()
    finally:
        if not task.done():
            session.stop()  # the client has gone: end the conversation
        result = await task
        clock.close()
        if not result.ok and result.failure is not None:
            error = str(result.failure)
    tl.server = _server_events(session.events)
    return _result(scenario, graph, "virtual", tl, error)


# -- real time ------------------------------------------------------------------------------------------------------
async def simulate_realtime(graph: Graph, scenario: Scenario, server: Any) -> ScenarioResult:
    """Play ``scenario`` over a WebSocket to ``server`` (a started :class:`AgentServer` serving ``graph``)."""
    url = f"ws://127.0.0.1:{server.port}/v1/convai/conversation?agent_id={graph.name}"
    clips = [load_clip(scenario.audio_path(s)) for s in scenario.steps]
    before = set(server.sessions)
    async with connect(url, open_timeout=10, max_size=None) as ws:
        player = Player(scenario, clips, _WebSocketLink(ws), MonotonicClock())
        play = asyncio.ensure_future(player.play())
        session: Session | None = None
        while session is None and not play.done():
            new = [s for sid, s in server.sessions.items() if sid not in before]
            session = new[0] if new else None
            await asyncio.sleep(0.005)
        tl = await play
    if session is not None:
        # The session ends once the client has gone; its events are complete then.
        for _ in range(200):
            if session.id not in server.sessions:
                break
            await asyncio.sleep(0.01)
        tl.server = _server_events(session.events)
    return _result(scenario, graph, "realtime", tl)


async def simulate_many(
    graph: Graph | str | Path,
    scenarios: Iterable[Scenario | str | Path],
    *,
    realtime: bool = False,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    on_result: Callable[[ScenarioResult], None] | None = None,
) -> list[ScenarioResult]:
    """Play every script through one graph; the function ``ah simulate`` and ``ah ab`` build on.

    Returns one :class:`ScenarioResult` per script, in order; each has ``turns`` (per-turn metrics,
    keyed ``scenario#step`` for pairing two variants) and ``timeline``.
    """
    g = graph if isinstance(graph, Graph) else load_graph(graph)
    scs = [s if isinstance(s, Scenario) else load_scenario(s) for s in scenarios]
    results: list[ScenarioResult] = []
    if not realtime:
        for sc in scs:
            r = await simulate_virtual(g, sc, overrides=overrides)
            results.append(r)
            if on_result:
                on_result(r)
        return results
    if overrides:
        raise ValueError("overrides apply to virtual-time runs; make a graph variant for real time")
    from ah.server.app import AgentServer, ServerConfig

    # A graph with a scripted recogniser gets each script's lines: one served agent per script.
    served = {sc.scenario: scripted_variant(g, sc) if _scripted(g) else g for sc in scs}
    server = AgentServer({v.name: v for v in served.values()}, ServerConfig(host="127.0.0.1", port=0))
    await server.preload()
    await server.start()
    try:
        for sc in scs:
            r = await simulate_realtime(served[sc.scenario], sc, server)
            r.graph = g.name
            results.append(r)
            if on_result:
                on_result(r)
    finally:
        await server.drain(2.0)
    return results


def simulate(
    graph: Graph | str | Path,
    scenarios: Iterable[Scenario | str | Path],
    *,
    realtime: bool = False,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[ScenarioResult]:
    """:func:`simulate_many` for callers without an event loop."""
    return asyncio.run(simulate_many(graph, scenarios, realtime=realtime, overrides=overrides))
