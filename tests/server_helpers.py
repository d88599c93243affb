"""Shared pieces of the server tests: an in-process server, WebSocket clients, and a healthy session
that runs beside a misbehaving one."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import yaml
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from ah.runtime.graph_loader import Graph, load_graph
from ah.server.access import AccessPolicy
from ah.server.app import AgentServer, ServerConfig

ROOT = Path(__file__).resolve().parents[1]
VOICE = ROOT / "tests" / "graphs" / "scripted_voice.yaml"
AH = [sys.executable, "-m", "ah.cli"]
AGENT = "scripted_voice"
INIT: dict[str, Any] = {
    "type": "conversation_initiation_client_data",
    "conversation_config_override": {"text_only": True},
    "dynamic_variables": {"user_name": "Ana"},
}
STEP_S = 5.0  # the longest any single expected event may take


def voice_variant(
    directory: Path, name: str, top: dict[str, Any] | None = None, **node_params: dict[str, Any]
) -> Path:
    """A copy of the scripted voice graph named ``name``, with some node params changed
    (``client={"send_timeout_s": 0.5}``) and top-level keys added (``{"access": {...}}``)."""
    data = yaml.safe_load(VOICE.read_text())
    data["graph"] = name
    for node_id, params in node_params.items():
        data["nodes"][node_id].setdefault("params", {}).update(params)
    data.update(top or {})
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def voice_graphs(*paths: Path) -> dict[str, Graph]:
    graphs = [load_graph(p) for p in (paths or (VOICE,))]
    return {g.name: g for g in graphs}


@asynccontextmanager
async def serving(
    graphs: dict[str, Graph] | None = None,
    config: ServerConfig | None = None,
    access: AccessPolicy | None = None,
) -> AsyncIterator[AgentServer]:
    server = AgentServer(graphs or voice_graphs(), config or ServerConfig(port=0), access or AccessPolicy())
    await server.start()
    try:
        yield server
    finally:
        await server.drain(0)


def ws_url(port: int, agent_id: str | None = AGENT, **params: str) -> str:
    query = {"agent_id": agent_id, **params} if agent_id is not None else dict(params)
    return f"ws://127.0.0.1:{port}/v1/convai/conversation?{urlencode(query)}"


async def recv_json(ws: ClientConnection, within: float = STEP_S) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), within)
    msg = json.loads(raw)
    assert isinstance(msg, dict)
    return msg


async def recv_until(
    ws: ClientConnection, mtype: str, within: float = STEP_S, *, skip: set[str] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read until a message of ``mtype``; return it and everything read before it."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    while True:
        msg = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if msg["type"] == mtype:
            return msg, seen
        if skip is None or msg["type"] not in skip:
            seen.append(msg)


async def open_conversation(url: str, init: dict[str, Any] | None = None, **kwargs: Any) -> ClientConnection:
    """Connect, send the initiation message and read the metadata (which must come first)."""
    ws = await connect(url, open_timeout=STEP_S, **kwargs)
    await ws.send(json.dumps(init or INIT))
    first = await recv_json(ws)
    assert first["type"] == "conversation_initiation_metadata", first
    return ws


async def text_turn(ws: ClientConnection, text: str = "Hello there", *, allow_errors: bool = False) -> str:
    """One typed turn: returns the agent's full response text."""
    await ws.send(json.dumps({"type": "user_message", "text": text}))
    msg, seen = await recv_until(ws, "agent_response")
    errors = [m for m in seen if m["type"] == "error"]
    assert allow_errors or not errors, errors
    text_out = msg["agent_response_event"]["agent_response"]
    assert isinstance(text_out, str) and text_out
    return text_out


def error_event(msg: dict[str, Any]) -> dict[str, Any]:
    assert msg["type"] == "error", msg
    event = msg["error_event"]
    assert isinstance(event, dict)
    return event


async def healthy_session(port: int, until: asyncio.Event, within: float = 8.0) -> list[str]:
    """A well-behaved client beside a bad one: a turn before, and a turn after, ``until`` is set."""
    ws = await open_conversation(ws_url(port))
    try:
        replies = [await text_turn(ws, "What is the weather like?")]
        await asyncio.wait_for(until.wait(), within)
        replies.append(await text_turn(ws, "Tell me more."))
        return replies
    finally:
        await ws.close()


async def side_by_side(port: int, bad: Callable[[], Any]) -> Any:
    """Run ``bad()`` while a healthy session is open; both must succeed. Returns ``bad()``'s result."""
    done = asyncio.Event()

    async def run_bad() -> Any:
        try:
            return await bad()
        finally:
            done.set()

    result, replies = await asyncio.gather(run_bad(), healthy_session(port, done))
    assert len(replies) == 2 and all("sunny" in r or "not much more" in r for r in replies), replies
    return result


async def wait_for(predicate: Callable[[], bool], within: float = STEP_S, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


class RawClient:
    """A WebSocket client that reads only when told to: a small socket receive buffer and no reader
    in the background, so a server writing to it soon finds the connection full."""

    def __init__(self, sock: socket.socket, protocol: ClientProtocol) -> None:
        self.sock = sock
        self.protocol = protocol
        self.loop = asyncio.get_running_loop()
        self.texts: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, url: str, rcvbuf: int = 4096) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: fixes the window
        sock.setblocking(False)
        uri = parse_uri(url)
        await asyncio.get_running_loop().sock_connect(sock, (uri.host, uri.port))
        client = cls(sock, ClientProtocol(uri, max_size=None))
        client.protocol.send_request(client.protocol.connect())
        await client.flush()
        while client.protocol.state is State.CONNECTING:
            await client.read_some()
        assert client.protocol.state is State.OPEN, client.protocol.handshake_exc
        return client

    async def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                await self.loop.sock_sendall(self.sock, data)

    async def send_json(self, obj: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(obj).encode())
        await self.flush()

    async def read_some(self) -> bool:
        """Read once from the socket; False at EOF or reset."""
        try:
            data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 1 << 16), STEP_S)
        except ConnectionError:
            data = b""
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.texts.append(json.loads(event.data))
        await self.flush()  # answers a close frame
        return bool(data)

    async def read_to_close(self, within: float = STEP_S) -> Close | None:
        """Read everything up to the end of the stream (the server ends it after the closing handshake,
        or aborts it); return the server's close frame, None if there was none."""
        async with asyncio.timeout(within):
            while await self.read_some():
                pass
        self.sock.close()
        return self.protocol.close_rcvd

    def close(self) -> None:
        self.sock.close()


# -- `ah run` as a subprocess -------------------------------------------------------------------------------
class ServerProcess:
    """``ah run ARGS`` in a subprocess; the banner is read, and the port taken from it."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*AH, "run", *args, "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.banner = self._read_banner()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", self.banner)
        assert m, self.banner
        self.port = int(m.group(1))

    def _read_banner(self, timeout: float = 15.0) -> str:
        assert self.proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.lstrip().startswith("health:"):
                return "".join(lines)
        self.proc.kill()
        _, err = self.proc.communicate()
        raise AssertionError(f"no banner from ah run: {''.join(lines)}\n{err}")

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 10.0) -> tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"ah run did not exit in {timeout} s:\n{err}") from None
        return self.proc.returncode, err

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
