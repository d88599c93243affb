"""``ah run --workers 2 --max-sessions K``: the server refuses (1013) only when every worker is full.

All workers accept from one shared socket and the kernel gives a connection to whichever accepts
first, so without coordination a full worker would take a connection and refuse it while its sibling
had room. Here connections are made to land unevenly on purpose: worker B is frozen (SIGSTOP) while
worker A fills up, so every connection goes to A; the next one must then wait for B (A steps aside,
it is not refused by A), and once B runs again every remaining session lands on B. Deterministic: a
full worker that kept accepting would refuse that connection with 1013 at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.server_helpers import INIT, STEP_S, VOICE, ServerProcess, recv_json, text_turn, ws_url

K = 2  # sessions per worker
REFUSAL = f"try again later: this server is at its session limit ({K})"


def worker_pid(ws: ClientConnection) -> int:
    assert ws.response is not None
    return int(ws.response.headers["X-Ah-Instance"].rsplit("/", 1)[1])


async def attempt(url: str) -> tuple[str, Any]:
    """One try, no retry: ("ok", (ws, pid)) with the metadata read, or ("refused", (code, reason))."""
    ws = await connect(url, open_timeout=STEP_S)
    try:
        await ws.send(json.dumps(INIT))
        first = await recv_json(ws)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, exc
        return "refused", (exc.rcvd.code, exc.rcvd.reason)
    assert first["type"] == "conversation_initiation_metadata", first
    return "ok", (ws, worker_pid(ws))


async def admitted(url: str) -> tuple[ClientConnection, int]:
    kind, info = await attempt(url)
    assert kind == "ok", f"refused although a worker had room: {info}"
    ws, pid = info
    assert isinstance(ws, ClientConnection) and isinstance(pid, int)
    return ws, pid


def start(*extra: str) -> tuple[ServerProcess, list[int]]:
    server = ServerProcess(
        str(VOICE), "--workers", "2", "--max-sessions", str(K), "--drain-timeout", "1", *extra
    )
    m = server.banner.split("workers: 2 processes on this port (pids ")
    assert len(m) == 2, server.banner
    return server, [int(p) for p in m[1].split(";")[0].split(", ")]


def test_a_full_worker_leaves_connections_to_its_sibling_and_1013_comes_only_when_all_are_full() -> None:
    server, (a, b) = start()
    try:

        async def main() -> None:
            url = ws_url(server.port)
            http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=STEP_S)
            sessions: list[tuple[ClientConnection, int]] = []
            os.kill(b, signal.SIGSTOP)  # B accepts nothing: everything lands on A
            try:
                for _ in range(K):
                    sessions.append(await admitted(url))
                assert [pid for _, pid in sessions] == [a] * K
                # A is full and B (frozen) has room: A must leave the next connection in the queue
                # for B instead of taking it and refusing it.
                waiting = asyncio.ensure_future(attempt(url))
                await asyncio.sleep(0.5)
                assert not waiting.done(), (
                    f"a full worker answered while its sibling had room: {waiting.result()}"
                )
            finally:
                os.kill(b, signal.SIGCONT)
            kind, info = await asyncio.wait_for(waiting, STEP_S)
            assert kind == "ok" and info[1] == b, (kind, info)
            sessions.append(info)
            # A is still full: the rest go to B, none refused.
            while len(sessions) < 2 * K:
                sessions.append(await admitted(url))
            assert Counter(pid for _, pid in sessions) == {a: K, b: K}

            # All 2K taken: the next one is refused at once, and readiness says so.
            t0 = time.monotonic()
            kind, info = await attempt(url)
            assert (kind, info) == ("refused", (1013, REFUSAL)), (kind, info)
            assert time.monotonic() - t0 < 1.0, "the refusal must not wait"
            r = await http.get("/readyz")
            assert (r.status_code, r.text) == (503, "at capacity\n")

            # A session on A ends: readiness comes back (answered by A: B, full, steps aside), and the
            # next session is admitted at the first try, on A.
            ws, _ = next(s for s in sessions if s[1] == a)
            sessions.remove((ws, a))
            await ws.close()
            deadline = time.monotonic() + STEP_S
            while (r := await http.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, "never ready again after a session ended"
                await asyncio.sleep(0.02)
            assert r.headers["X-Ah-Instance"].endswith(f"/{a}")
            sessions.append(await admitted(url))
            assert sessions[-1][1] == a
            # Every session is served.
            for ws, _ in sessions:
                assert "sunny" in await text_turn(ws)
            for ws, _ in sessions:
                await ws.close()
            await http.aclose()

        asyncio.run(asyncio.wait_for(main(), 60))
        server.terminate()
        code, err = server.wait()
        assert code == 0, err
        assert err.count("refused a session to scripted_voice") == 1, err
    finally:
        server.close()


def test_a_burst_of_exactly_the_capacity_is_admitted_whole() -> None:
    """2K connections at once: each worker takes K (connections still in their handshake count
    against a worker's room, so a burst does not pile onto the first worker to wake); one more: 1013."""
    server, pids = start()
    try:

        async def main() -> None:
            url = ws_url(server.port)
            results = await asyncio.gather(*(attempt(url) for _ in range(2 * K)))
            refused = [info for kind, info in results if kind != "ok"]
            assert not refused, refused
            assert Counter(info[1] for _, info in results) == dict.fromkeys(pids, K)
            kind, info = await attempt(url)
            assert (kind, info) == ("refused", (1013, REFUSAL)), (kind, info)
            for _, (ws, _) in results:
                await ws.close()

        asyncio.run(asyncio.wait_for(main(), 60))
        server.terminate()
        code, err = server.wait()
        assert code == 0, err
    finally:
        server.close()


def test_a_stuck_or_killed_worker_with_room_does_not_hold_connections() -> None:
    """A is full, B has room. While B is frozen (SIGSTOP: its event loop stuck) A steps aside, but
    only until B's slot goes stale (3 s without a heartbeat); then A answers 1013. When B is killed
    (SIGKILL) the supervisor zeroes its slot at once, so a new connection is answered within a
    second (1013 from A, or a session on the restarted B), and sessions then land on the new B."""
    server, (a, b) = start()
    try:

        async def main() -> None:
            url = ws_url(server.port)
            os.kill(b, signal.SIGSTOP)
            try:
                full = [await admitted(url) for _ in range(K)]
                t0 = time.monotonic()
                kind, info = await attempt(url)
                took = time.monotonic() - t0
            finally:
                os.kill(b, signal.SIGCONT)
            assert [pid for _, pid in full] == [a] * K
            assert (kind, info) == ("refused", (1013, REFUSAL)), (kind, info)
            # It waited (A stepped aside for B), but not for ever: refused once B went stale.
            assert 0.3 < took < STEP_S, f"refused after {took:.1f} s; B's slot goes stale after 3 s"
            os.kill(b, signal.SIGKILL)
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            kind, info = await attempt(url)
            took = time.monotonic() - t0
            assert took < 1.0, f"a connection waited {took:.1f} s for a dead worker"
            if kind == "refused":
                assert info == (1013, REFUSAL), info
            else:
                assert info[1] not in (a, b), info
                await info[0].close()
            # Once the new B is up, sessions land on it (A, full, steps aside again).
            deadline = time.monotonic() + 30
            while True:
                kind, info = await attempt(url)
                if kind == "ok":
                    break
                assert info == (1013, REFUSAL), info
                assert time.monotonic() < deadline, "the restarted worker never took a session"
                await asyncio.sleep(0.1)
            ws, pid = info
            assert pid not in (a, b), pid
            assert "sunny" in await text_turn(ws)
            for w, _ in [*full, (ws, pid)]:
                await w.close()

        asyncio.run(asyncio.wait_for(main(), 60))
        server.terminate()
        code, err = server.wait()
        assert code == 0, err
        assert f"(pid {b}) killed by SIGKILL" in err, err
    finally:
        server.close()
