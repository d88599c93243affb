"""The HTTP + WebSocket server behind ``ah run``.

Routes: ``/v1/convai/conversation`` (WebSocket, one session per connection),
``/v1/convai/conversation/get-signed-url``, ``/healthz``, ``/readyz``, ``/`` (the talk page) and
``/agents`` (the agent ids, a JSON list, for the talk page) and ``/metrics`` (Prometheus).
Built on the ``websockets`` server alone: HTTP routes are answered in ``process_request`` before the
upgrade, so there is one event loop, one port and no web framework to keep in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from ah.runtime.graph_loader import Graph
from ah.runtime.session import Session
from ah.runtime.websocket_cycles import release_closed
from ah.server.access import AccessMode, AccessPolicy
from ah.server.connection import WebSocketConnection
from ah.server.gate import GatedListener, gate_websockets_server
from ah.server.occupancy import OccupancyTable
from ah.telemetry.hub import PROMETHEUS_CONTENT_TYPE, Telemetry

log = logging.getLogger("ah.server")

CONVERSATION_PATH = "/v1/convai/conversation"
#: gen-1 collections between full ones (Python's default: 10); see AgentServer.preload.
FULL_COLLECTION_EVERY = 100
SIGNED_URL_PATH = "/v1/convai/conversation/get-signed-url"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_message_bytes: int = 1 << 20  # a larger client message is refused: close 1009
    max_sessions: int = 0  # 0: no limit
    drain_timeout_s: float = 30.0
    close_timeout_s: float = 5.0  # a client that does not answer our close in this long is cut off
    public_url: str | None = None  # base of signed URLs when behind a proxy
    # A listening socket made by someone else (``ah run --workers N``: the supervisor binds once and
    # every worker accepts from it); when set, host and port are not bound here.
    listen_fd: int | None = None
    # ``--workers N`` with a session limit: the supervisor's shared table of each worker's room, and
    # this worker's slot in it (0-based). A full worker then stops accepting while a sibling has room.
    occupancy_fd: int | None = None
    worker_slot: int = 0
    backlog: int = 1024  # connections the kernel queues before one is accepted (a burst of sessions)
    # permessage-deflate on the WebSocket. Off by default: nearly every byte is base64 PCM audio, which
    # deflate shrinks little (mostly the base64 overhead back), while compressing every message costs
    # about a tenth of the server's CPU per session (experiments/capacity.py, --compression) and a
    # zlib context per direction per connection. Turn it on for thin links carrying mostly text.
    compression: bool = False


def instance_name() -> str:
    """``host/pid``: which process answered, sent as ``X-Ah-Instance`` on every response, so that a
    session seen through a load balancer (or among ``--workers``) can be traced to its process."""
    return f"{socket.gethostname()}/{os.getpid()}"


def _select_subprotocol(connection: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
    # The JS client offers "convai" and fails unless it is selected; the Python SDK offers nothing.
    return Subprotocol("convai") if "convai" in offered else None


def _query(path: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(path).query, keep_blank_values=True).items()}


class AgentServer:
    def __init__(
        self,
        graphs: dict[str, Graph],
        config: ServerConfig | None = None,
        access: AccessPolicy | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        if not graphs:
            raise ValueError("no graphs to serve")
        self.graphs = graphs
        # Prometheus /metrics by default; traces and metrics files when the telemetry settings ask.
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.config = config or ServerConfig()
        self.access = access or AccessPolicy()
        # Each graph's own `access:` block, where it has one, overrides the server's mode and origins.
        self.rules: dict[str, tuple[AccessMode, frozenset[str]]] = {}
        for agent_id, graph in graphs.items():
            try:
                self.rules[agent_id] = self.access.rules_for(graph.data.get("access"))
            except ValueError as exc:
                raise ValueError(f"graph {agent_id!r}: invalid access block: {exc}") from None
            mode = self.rules[agent_id][0]
            if mode is not AccessMode.PUBLIC and not self.access.api_keys:
                raise ValueError(
                    f"agent {agent_id!r} has access mode {mode.value!r}, which needs at least "
                    "one API key (--api-key or AH_API_KEYS)"
                )
        self.sessions: dict[str, Session] = {}
        self.draining = False
        self.started_sessions = 0
        self.failed_sessions = 0
        self.refused_sessions = 0  # closed with 1013 at the session limit
        self._server: Server | None = None
        self._stopped = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._drain_deadline = 0.0
        self._drain_task: asyncio.Task[None] | None = None
        # With --workers and a limit: connections accepted whose fate (a session, or a plain HTTP
        # request) is not known yet; they count against this worker's room, see room().
        self._gate: GatedListener | None = None
        self._admitting: set[ServerConnection] = set()
        self.port = self.config.port
        self.instance = instance_name()

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _respond(
        self, status: int, body: str | bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> Response:
        data = body.encode() if isinstance(body, str) else body
        headers = Headers(
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(data))),
                ("Cache-Control", "no-store"),
            ]
        )
        return Response(status, HTTPStatus(status).phrase, headers, data)

    def _json(self, status: int, obj: Any) -> Response:
        return self._respond(status, json.dumps(obj), "application/json")

    def _ws_base(self, request: Request) -> str:
        if self.config.public_url:
            return self.config.public_url.rstrip("/").replace("http", "ws", 1)
        host = request.headers.get("Host") or f"{self.config.host}:{self.port}"
        return f"ws://{host}"

    def _known(self) -> str:
        return ", ".join(sorted(self.graphs))

    def _signed_url(self, request: Request, query: dict[str, str]) -> Response:
        if self.access.api_keys or any(mode is not AccessMode.PUBLIC for mode, _ in self.rules.values()):
            why = self.access.check_api_key(request.headers.get("xi-api-key"))
            if why:
                return self._json(401, {"detail": why})
        agent_id = query.get("agent_id", "")
        if agent_id not in self.graphs:
            return self._json(
                404, {"detail": f"unknown agent_id {agent_id[:64]!r}; this server has: {self._known()}"}
            )
        params = urlencode({"agent_id": agent_id, "conversation_signature": self.access.sign(agent_id)})
        return self._json(200, {"signed_url": f"{self._ws_base(request)}{CONVERSATION_PATH}?{params}"})

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        response = self._route(connection, request)
        if response is not None:  # a plain HTTP answer: this connection will not be a session
            self._settle(connection)
        return response

    def _route(self, connection: ServerConnection, request: Request) -> Response | None:
        query = _query(request.path)
        path = urlsplit(request.path).path.rstrip("/") or "/"
        if path == "/healthz":
            return self._respond(200, "ok\n")
        if path == "/readyz":
            if self.draining:
                return self._respond(503, "draining\n")
            if self.at_capacity():
                return self._respond(503, "at capacity\n")
            return self._respond(200, "ready\n")
        if path == "/":
            return self._respond(200, talk_page(), "text/html; charset=utf-8")
        if path == "/metrics" and self.telemetry.prometheus is not None:
            return self._respond(200, self.telemetry.prometheus_text(), PROMETHEUS_CONTENT_TYPE)
        if path == "/agents":  # the talk page's agent list
            return self._json(200, sorted(self.graphs))
        if path == SIGNED_URL_PATH:
            return self._signed_url(request, query)
        if path == CONVERSATION_PATH:
            if self.draining:
                return self._respond(503, "server is draining (shutting down); connect to another instance\n")
            agent_id = query.get("agent_id", "")
            if agent_id in self.graphs:
                mode, origins = self.rules[agent_id]
                refusal = self.access.check_connect(
                    agent_id,
                    api_key=request.headers.get("xi-api-key"),
                    signature=query.get("conversation_signature"),
                    origin=request.headers.get("Origin"),
                    mode=mode,
                    allowed_origins=origins,
                )
                if refusal is not None:
                    status, why = refusal
                    log.info("refused a connection to %s: %s", agent_id, why)
                    return self._respond(status, why + "\n")
            # An unknown agent id is accepted, then closed with 1008 and the known ids: the official
            # clients show a close reason, not an HTTP body.
            return None
        return self._respond(
            404,
            f"no route {path[:200]}; this server answers {CONVERSATION_PATH}?agent_id=ID (WebSocket), "
            f"{SIGNED_URL_PATH}?agent_id=ID, /healthz, /readyz, /metrics and / (talk page). Agents: {self._known()}\n",
        )

    def _process_response(self, connection: ServerConnection, request: Request, response: Response) -> None:
        response.headers["X-Ah-Instance"] = self.instance

    def at_capacity(self) -> bool:
        return bool(self.config.max_sessions) and len(self.sessions) >= self.config.max_sessions

    def room(self) -> int:
        """Sessions this process can still start (with --workers, what its siblings see): the limit
        less the running sessions and the connections whose request has not been read yet."""
        if self.draining:
            return 0
        return self.config.max_sessions - len(self.sessions) - len(self._admitting)

    def _adopted(self, protocol: Any) -> None:
        """The gate accepted a connection: it may be a session, so it counts against room() until
        its request says what it is (``_settle``) or it closes."""
        self._admitting.add(protocol)

    def _settle(self, connection: ServerConnection) -> None:
        if connection in self._admitting:
            self._admitting.discard(connection)
            self._occupancy_changed()

    def _occupancy_changed(self) -> None:
        if self._gate is not None:
            self._gate.update()

    # -- WebSocket sessions --------------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        # From here to the session's registration nothing awaits, so the connection leaves "admitting"
        # and enters the sessions in one step: room() never looks larger than it is (each refusal
        # below publishes the change itself).
        self._admitting.discard(ws)
        query = _query(request.path)
        agent_id = query.get("agent_id", "")
        conn = WebSocketConnection(ws, close_timeout_s=self.config.close_timeout_s)
        graph = self.graphs.get(agent_id)
        if graph is None:
            given = f"unknown agent_id {agent_id[:40]!r}" if agent_id else "no agent_id in the URL"
            self._occupancy_changed()
            await conn.close(1008, f"{given}; this server has: {self._known()}")
            return
        if self.draining:
            self._occupancy_changed()
            await conn.close(1013, "server is draining; try again")
            return
        if self.at_capacity():
            # Admission, not collapse: refused at once, before a single node starts, so the sessions
            # already running keep their latency; /readyz says 503 meanwhile so a balancer looks elsewhere.
            self.refused_sessions += 1
            log.info("refused a session to %s: at the session limit (%d)", agent_id, self.config.max_sessions)
            self._occupancy_changed()
            await conn.close(
                1013, f"try again later: this server is at its session limit ({self.config.max_sessions})"
            )
            return
        tracker = self.telemetry.observer()
        session = Session(
            graph,
            attachments={"connection": conn, "agent_id": agent_id, "query": query},
            observers=[tracker] if tracker is not None else (),
            tracer=self.telemetry.node_tracer(),
        )
        self.sessions[session.id] = session
        self._idle.clear()
        self.started_sessions += 1
        self._occupancy_changed()
        t0 = time.monotonic()
        try:
            result = await session.run()
        finally:
            self.sessions.pop(session.id, None)
            if not self.sessions:
                self._idle.set()
            self._occupancy_changed()
        try:
            if result.ok:
                await conn.close(1000, "session ended")
            else:
                self.failed_sessions += 1
                failure = result.failure
                reason = str(failure) if failure else "session failed"
                report = session.attachments.get("report_failure")
                if report is not None and not conn.closed:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(report(reason), 2.0)
                await conn.close(1011, reason)
        finally:
            session.release()  # freed by reference counting, not left for a full collection
        log.info(
            "session %s (%s) ended after %.1f s: %s",
            session.id,
            agent_id,
            time.monotonic() - t0,
            "ok" if result.ok else result.failure,
        )

    # -- lifecycle -----------------------------------------------------------------------------------------------
    async def preload(self) -> None:
        """Load every served graph's shared models now, not during the first conversation."""
        for graph in self.graphs.values():
            for node in graph.nodes.values():
                t0 = time.monotonic()
                await node.cls.preload(node.params)
                took = time.monotonic() - t0
                if took > 0.05:
                    log.info("preloaded %s (%s) for %s in %.1f s", node.id, node.type_name, graph.name, took)
        # What exists now lives as long as the process: modules, models, parsed graphs. Frozen, the
        # collector stops walking it, so a full collection walks only the sessions' objects: under
        # 100 sessions an unfrozen one stalled the event loop for 80-130 ms (every turn in flight
        # waited); see experiments/capacity.py --stalls.
        gc.collect()
        gc.freeze()
        # And full collections ten times rarer (after 100 gen-1 collections, not 10). With the process's
        # objects frozen, what the collector counts as long-lived is only the sessions' objects, so
        # under load its rule (pending > a quarter of those) let a full collection, 45-80 ms for 100
        # sessions, run every few seconds: each one stalled every turn in flight. This costs no memory
        # because an ended session is not cyclic garbage (Session.release, and
        # tests/test_session_memory.py): reference counting frees it as soon as it ends.
        young, middle, _ = gc.get_threshold()
        gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)

    async def start(self) -> None:
        where: dict[str, Any] = {"host": self.config.host, "port": self.config.port}
        if self.config.listen_fd is not None:
            where = {"sock": socket.socket(fileno=self.config.listen_fd)}
        gated = self.config.listen_fd is not None and self.config.occupancy_fd is not None
        if gated:  # the gate accepts from the socket, not the event loop's server (ah.server.gate)
            listen_sock = where.pop("sock")
        else:
            where["backlog"] = self.config.backlog
        server = serve(
            self._handle,
            **where,
            compression="deflate" if self.config.compression else None,
            process_request=self._process_request,
            process_response=self._process_response,
            select_subprotocol=_select_subprotocol,
            max_size=self.config.max_message_bytes,
            ping_interval=20,
            ping_timeout=20,
            close_timeout=self.config.close_timeout_s,
            create_connection=self._connection_class(),
        )
        if gated:
            assert self.config.occupancy_fd is not None
            table = OccupancyTable.attach(self.config.occupancy_fd)
            if not 0 <= self.config.worker_slot < table.slots:
                raise ValueError(f"worker slot {self.config.worker_slot} outside the table ({table.slots})")
            self._gate = gate_websockets_server(
                server,
                {
                    "sock": listen_sock,
                    "table": table,
                    "index": self.config.worker_slot,
                    "room": self.room,
                    "adopted": self._adopted,
                },
            )
        self._server = await server
        await self._server.start_serving()  # the gate does not start until asked (loop servers have)
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]

    def _connection_class(self) -> type[ServerConnection]:
        """``ServerConnection`` that tells us when it closes, so a connection that never sent its
        request (or failed its handshake) stops counting against this worker's room."""
        agent = self

        class Connection(ServerConnection):
            def connection_lost(self, exc: Exception | None) -> None:
                super().connection_lost(exc)
                agent._settle(self)
                # Freed by reference counting, not left for the rare full collections (see preload).
                release_closed(self.protocol)

        return Connection

    async def drain(self, timeout_s: float | None = None) -> None:
        """Stop taking sessions; let running ones finish up to the deadline; then close them normally
        (1000). Calling it again (a second SIGTERM) moves the deadline to ``timeout_s`` from now."""
        timeout = self.config.drain_timeout_s if timeout_s is None else timeout_s
        if self.draining:
            self._drain_deadline = min(self._drain_deadline, time.monotonic() + timeout)
            await self._stopped.wait()
            return
        self.draining = True
        self._occupancy_changed()  # no room: siblings with room take the new connections
        self._drain_deadline = time.monotonic() + timeout
        log.info("draining: %d session(s) running; they have %.0f s to finish", len(self.sessions), timeout)
        while not self._idle.is_set():
            left = self._drain_deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                # Wake now and then: a second signal may have moved the deadline.
                await asyncio.wait_for(self._idle.wait(), min(left, 0.25))
        if self.sessions:
            log.info("drain deadline: closing %d session(s)", len(self.sessions))

        async def _end(session: Session) -> None:
            conn = session.attachments.get("connection")
            if isinstance(conn, WebSocketConnection):
                with contextlib.suppress(Exception):
                    await conn.close(1000, "server shutting down")
            session.stop()

        await asyncio.gather(*(_end(s) for s in list(self.sessions.values())))
        await self._idle.wait()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # The last turns' spans go out before the process exits (the exporters work on their own thread).
        await asyncio.to_thread(self.telemetry.flush)
        self._stopped.set()

    def _on_signal(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.ensure_future(self.drain())
        else:  # a second signal: stop waiting for the running sessions
            self._drain_deadline = time.monotonic()

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self._on_signal)
        try:
            await self._stopped.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError):
                    loop.remove_signal_handler(sig)

    def banner(self) -> str:
        host = self.config.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        if ":" in shown:
            shown = f"[{shown}]"
        http, ws = f"http://{shown}:{self.port}", f"ws://{shown}:{self.port}"
        ids = sorted(self.graphs)
        width = max(len(i) for i in ids)
        lines = [
            f"ah is serving {len(ids)} agent{'s' if len(ids) != 1 else ''} at {http}"
            + (f" (listening on {host})" if shown != host else "")
        ]
        lines.append("  agents (agent id -> WebSocket URL, access):")
        for agent_id in ids:
            mode, origins = self.rules[agent_id]
            how = mode.value + (f", origins {', '.join(sorted(origins))}" if origins else "")
            lines.append(
                f"    {agent_id:<{width}}  {ws}{CONVERSATION_PATH}?{urlencode({'agent_id': agent_id})}"
                f"  ({how})"
            )
        first = ids[0]
        signed = any(mode is AccessMode.SIGNED for mode, _ in self.rules.values())
        lines += [
            "  connect:",
            f"    Python SDK  Conversation(ElevenLabs(api_key=KEY, base_url='{http}'), '{first}', "
            f"requires_auth={signed}, ...)",
            f"    JS client   Conversation.startSession({{agentId: '{first}', connectionType: 'websocket', "
            f"origin: '{ws}'}})",
        ]
        if signed or self.access.api_keys:
            lines.append(
                f"    signed URL  curl -H 'xi-api-key: KEY' '{http}{SIGNED_URL_PATH}?agent_id={first}'"
            )
        lines += [
            f"    browser     {http}/   (talk page)",
            f"  health: {http}/healthz  {http}/readyz  metrics: {http}/metrics      stop: Ctrl-C or SIGTERM (drains, "
            f"{self.config.drain_timeout_s:g} s)",
        ]
        return "\n".join(lines)


def talk_page() -> bytes:
    page = Path(__file__).with_name("talk.html")
    if page.is_file():
        return page.read_bytes()
    return resources.files("ah.server").joinpath("talk.html").read_bytes()
