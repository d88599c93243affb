"""``ah run --workers N``: worker processes on one port under a supervisor (issue 9 point 3).

Deterministic by construction: each worker takes at most ``--max-sessions 3``, so opening six
sessions (retrying the ones a full worker refuses with 1013) puts exactly three on each worker; the
``X-Ah-Instance`` header of the handshake says which process took a session.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

from tests.server_helpers import (
    AH,
    INIT,
    STEP_S,
    VOICE,
    ServerProcess,
    recv_json,
    text_turn,
    ws_url,
)

PER_WORKER = 3


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def worker_pid(ws: ClientConnection) -> int:
    assert ws.response is not None
    return int(ws.response.headers["X-Ah-Instance"].rsplit("/", 1)[1])


async def open_somewhere(
    url: str, within: float = 20.0, avoid: int | None = None
) -> tuple[ClientConnection, int]:
    """Open a conversation on whichever worker accepts it: one at its limit closes with 1013
    ("try again later"), and we do, as a client of the protocol should."""
    deadline = time.monotonic() + within
    refusals = 0
    while True:
        assert time.monotonic() < deadline, f"no worker took a session in {within} s ({refusals} refusals)"
        ws = await connect(url, open_timeout=STEP_S)
        try:
            await ws.send(json.dumps(INIT))  # a refusal may already be on its way: send can see it
            first = await recv_json(ws)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 1013, exc
            assert exc.rcvd.reason.startswith("try again later"), exc.rcvd.reason
            refusals += 1
            await asyncio.sleep(0.05)
            continue
        assert first["type"] == "conversation_initiation_metadata", first
        pid = worker_pid(ws)
        assert pid != avoid, f"a session landed on the killed worker {avoid}"
        return ws, pid


async def closed_within(ws: ClientConnection, within: float) -> float:
    """Read until the connection ends; return how long that took (it must not hang)."""
    t0 = time.monotonic()
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(within):
            while True:
                await ws.recv()
    return time.monotonic() - t0


def test_a_killed_worker_loses_only_its_sessions_and_is_restarted() -> None:
    server = ServerProcess(
        str(VOICE), "--workers", "2", "--max-sessions", str(PER_WORKER), "--drain-timeout", "1"
    )
    try:
        m = server.banner.split("workers: 2 processes on this port (pids ")
        assert len(m) == 2, server.banner
        first_pids = {int(p) for p in m[1].split(";")[0].split(", ")}

        async def main() -> None:
            url = ws_url(server.port)
            opened = [await open_somewhere(url) for _ in range(2 * PER_WORKER)]
            per_worker = Counter(pid for _, pid in opened)
            assert set(per_worker) == first_pids and set(per_worker.values()) == {PER_WORKER}, per_worker
            for ws, _ in opened:
                assert "sunny" in await text_turn(ws)

            victim = sorted(first_pids)[0]
            survivor = sorted(first_pids)[1]
            os.kill(victim, signal.SIGKILL)
            lost = [ws for ws, pid in opened if pid == victim]
            kept = [ws for ws, pid in opened if pid == survivor]
            # The victim's sessions end (TCP reset: no close frame), each promptly: none hangs.
            for ws in lost:
                await closed_within(ws, STEP_S)
            # The survivor's sessions go on as if nothing happened.
            for ws in kept:
                assert "not much more" in await text_turn(ws, "Tell me more.")
            # New sessions land on live workers: the survivor is full, so they go to the restarted
            # worker (connections that arrive before it is back wait in the shared queue).
            fresh = [await open_somewhere(url, avoid=victim) for _ in range(PER_WORKER)]
            new_pids = {pid for _, pid in fresh}
            assert len(new_pids) == 1 and not new_pids & first_pids, new_pids
            for ws, _ in fresh:
                assert "sunny" in await text_turn(ws)

            # SIGTERM drains every worker: no new sessions, running ones closed normally at the deadline.
            server.terminate()
            for ws in kept + [ws for ws, _ in fresh]:
                with pytest.raises(ConnectionClosedOK) as closed:
                    async with asyncio.timeout(STEP_S):
                        while True:
                            await ws.recv()
                assert closed.value.rcvd is not None
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1000, "server shutting down")

        run(main())
        code, err = server.wait()
        assert code == 0, err
        assert f"(pid {min(first_pids)}) killed by SIGKILL" in err, err
        assert "is back (pid" in err
        assert err.count("draining: ") == 2, err  # both workers drained
    finally:
        server.close()  # its workers notice the supervisor is gone and drain by themselves


def test_workers_usage_errors() -> None:
    """A bad --workers is a usage error (2); a port that is taken is a run failure (3), said plainly."""
    bad = subprocess.run(
        [*AH, "run", str(VOICE), "--workers", "0"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "--workers must be at least 1" in bad.stderr, bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = subprocess.run(
            [*AH, "run", str(VOICE), "--workers", "2", "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert (
        busy.returncode == 3
        and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
        and "--port" in busy.stderr
    ), busy.stderr
