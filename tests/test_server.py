"""Serving: routes, agent ids, a directory of graphs, the start banner, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidStatus

from ah.server.app import ServerConfig
from tests.server_helpers import (
    AGENT,
    STEP_S,
    VOICE,
    ServerProcess,
    open_conversation,
    recv_json,
    serving,
    text_turn,
    wait_for,
    ws_url,
)


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_routes() -> None:
    async def main() -> None:
        async with serving() as server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            r = await http.get("/healthz")
            assert (r.status_code, r.text) == (200, "ok\n")
            r = await http.get("/readyz")
            assert (r.status_code, r.text) == (200, "ready\n")
            r = await http.get("/v1/convai/agents")
            assert r.status_code == 404
            # The 404 says where things are, and which agents there are.
            assert "/v1/convai/conversation?agent_id=" in r.text and AGENT in r.text and "/healthz" in r.text
            r = await http.get("/v1/convai/conversation/get-signed-url", params={"agent_id": "nope"})
            assert r.status_code == 404 and AGENT in r.json()["detail"]
            r = await http.get("/")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")

    run(main())


def test_unknown_or_missing_agent_id_is_closed_with_the_known_ids() -> None:
    async def main() -> None:
        async with serving() as server:
            for url, given in [
                (ws_url(server.port, "no_such_agent"), "unknown agent_id 'no_such_agent'"),
                (ws_url(server.port, None), "no agent_id in the URL"),
            ]:
                async with connect(url) as ws:
                    with pytest.raises(ConnectionClosed) as info:
                        await recv_json(ws)
                rcvd = info.value.rcvd
                assert rcvd is not None and rcvd.code == 1008
                assert rcvd.reason == f"{given}; this server has: {AGENT}"

    run(main())


def test_session_limit_refuses_with_1013() -> None:
    async def main() -> None:
        async with serving(config=ServerConfig(port=0, max_sessions=1)) as server:
            ws = await open_conversation(ws_url(server.port))
            async with httpx.AsyncClient() as http:
                r = await http.get(f"http://127.0.0.1:{server.port}/readyz")
                assert (r.status_code, r.text) == (503, "at capacity\n")
            async with connect(ws_url(server.port)) as extra:
                with pytest.raises(ConnectionClosed) as info:
                    await recv_json(extra)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1013
            assert "sunny" in await text_turn(ws)  # the running one is untouched
            await ws.close()

    run(main())


def test_drain_in_process_refuses_new_sessions_and_lets_running_ones_finish() -> None:
    async def main() -> None:
        async with serving() as server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            ws = await open_conversation(ws_url(server.port))
            drain = asyncio.create_task(server.drain(10.0))
            await wait_for(lambda: server.draining, what="draining")
            r = await http.get("/readyz")
            assert (r.status_code, r.text) == (503, "draining\n")
            assert (await http.get("/healthz")).status_code == 200  # alive, just not taking sessions
            with pytest.raises(InvalidStatus) as info:
                await connect(ws_url(server.port))
            assert info.value.response.status_code == 503
            assert b"draining" in info.value.response.body
            assert "sunny" in await text_turn(ws)  # the running session is still served
            t0 = time.monotonic()
            await ws.close()  # ... and when it ends, the drain is over, long before its deadline
            await asyncio.wait_for(drain, STEP_S)
            assert time.monotonic() - t0 < 2.0

    run(main())


def test_a_second_signal_ends_the_drain_at_once() -> None:
    async def main() -> None:
        async with serving(config=ServerConfig(port=0, drain_timeout_s=30.0)) as server:
            ws = await open_conversation(ws_url(server.port))
            server._on_signal()  # SIGTERM: a 30 s drain begins
            await wait_for(lambda: server.draining, what="draining")
            assert "sunny" in await text_turn(ws)
            server._on_signal()  # a second SIGTERM (or Ctrl-C): no more waiting
            with pytest.raises(ConnectionClosedOK) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), STEP_S)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
            await asyncio.wait_for(server._stopped.wait(), STEP_S)

    run(main())


def test_a_directory_serves_each_graph_under_its_name(tmp_path: Path) -> None:
    for name in ("alpha", "beta"):
        text = VOICE.read_text().replace("graph: scripted_voice", f"graph: {name}")
        (tmp_path / f"{name}_agent.yaml").write_text(text)
    shutil.copy(
        VOICE.parent.parent.parent / "schemas" / "graph.schema.json", tmp_path
    )  # not a graph: ignored
    server = ServerProcess(str(tmp_path))
    try:
        banner = server.banner
        assert f"http://127.0.0.1:{server.port}" in banner
        for name in ("alpha", "beta"):
            assert f"ws://127.0.0.1:{server.port}/v1/convai/conversation?agent_id={name}" in banner
        assert "Python SDK" in banner and "JS client" in banner and "/healthz" in banner

        async def talk() -> None:
            for name in ("alpha", "beta"):
                ws = await open_conversation(ws_url(server.port, name))
                assert "sunny" in await text_turn(ws)
                await ws.close()
            async with connect(ws_url(server.port, "scripted_voice")) as ws:
                with pytest.raises(ConnectionClosed) as info:
                    await recv_json(ws)
            assert info.value.rcvd is not None
            assert info.value.rcvd.reason.endswith("this server has: alpha, beta")

        run(talk())
        server.terminate()
        code, _ = server.wait()
        assert code == 0
    finally:
        server.close()


def test_sigterm_drains(tmp_path: Path) -> None:
    server = ServerProcess(str(VOICE), "--drain-timeout", "1")
    try:

        async def main() -> None:
            finishing = await open_conversation(ws_url(server.port))
            lingering = await open_conversation(ws_url(server.port))
            t0 = time.monotonic()
            server.terminate()
            async with httpx.AsyncClient() as http:

                async def draining() -> bool:
                    r = await http.get(f"http://127.0.0.1:{server.port}/readyz")
                    return r.status_code == 503

                deadline = time.monotonic() + STEP_S
                while not await draining():
                    assert time.monotonic() < deadline, "readyz never said draining"
                    await asyncio.sleep(0.02)
            # No new sessions ...
            with pytest.raises(InvalidStatus) as info:
                await connect(ws_url(server.port))
            assert info.value.response.status_code == 503
            # ... but a running one is still served and may finish on its own.
            assert "sunny" in await text_turn(finishing)
            await finishing.close()
            assert finishing.close_code == 1000
            # One that does not finish is closed normally at the deadline.
            with pytest.raises(ConnectionClosedOK) as closed:
                while True:
                    json.loads(await asyncio.wait_for(lingering.recv(), STEP_S))
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "server shutting down")
            assert 0.9 < time.monotonic() - t0 < 5.0

        run(main())
        code, err = server.wait()
        assert code == 0, err
        assert "draining: 2 session(s) running" in err
    finally:
        server.close()
