"""Admission, not collapse (issue 9 point 2): past ``--max-sessions`` a process refuses new sessions at
once with close code 1013 and a reason that says to try again later, ``/readyz`` turns unready so a
balancer routes elsewhere, and the sessions already running are served as before."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ah.server.app import ServerConfig
from tests.server_helpers import (
    INIT,
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

LIMIT = 4
BURST = 12


async def attempt(url: str) -> tuple[str, Any]:
    """One connection attempt: ("ok", ws) with the metadata read, or ("refused", (code, reason, what
    was received before the close))."""
    ws = await connect(url, open_timeout=STEP_S)
    got: list[str] = []
    try:
        await ws.send(json.dumps(INIT))
        while True:
            msg = await recv_json(ws)
            got.append(msg["type"])
            if msg["type"] == "conversation_initiation_metadata":
                return "ok", ws
    except ConnectionClosed as exc:
        assert exc.rcvd is not None, exc
        return "refused", (exc.rcvd.code, exc.rcvd.reason, got)


def test_past_the_limit_new_sessions_get_1013_and_readyz_turns_unready() -> None:
    async def main() -> None:
        async with serving(config=ServerConfig(port=0, max_sessions=LIMIT)) as server:
            url = ws_url(server.port)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
                assert (await http.get("/readyz")).status_code == 200
                # A burst three times the limit, all at once: exactly LIMIT get a session.
                results = await asyncio.gather(*(attempt(url) for _ in range(BURST)))
                running = [ws for kind, ws in results if kind == "ok"]
                refused = [info for kind, info in results if kind == "refused"]
                assert len(running) == LIMIT and len(refused) == BURST - LIMIT
                for code, reason, got in refused:
                    # Refused before any node ran: nothing but the close frame reached the client.
                    assert (code, got) == (1013, []), (code, reason, got)
                    assert reason == f"try again later: this server is at its session limit ({LIMIT})"
                assert server.refused_sessions == BURST - LIMIT
                assert len(server.sessions) == LIMIT
                r = await http.get("/readyz")
                assert (r.status_code, r.text) == (503, "at capacity\n")
                assert (await http.get("/healthz")).status_code == 200  # alive, only full

                # The running sessions are served as before.
                replies = await asyncio.gather(*(text_turn(ws) for ws in running))
                assert all("sunny" in reply for reply in replies), replies

                # One ends: ready again, and the next session is admitted.
                await running.pop().close()
                await wait_for(lambda: len(server.sessions) == LIMIT - 1, what="the session to end")
                assert (await http.get("/readyz")).status_code == 200
                kind, ws = await attempt(url)
                assert kind == "ok", ws
                running.append(ws)
                assert "sunny" in await text_turn(ws)
                for ws in running:
                    await ws.close()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_max_sessions_from_the_environment() -> None:
    """``AH_MAX_SESSIONS`` sets the limit (a Kubernetes Deployment sets it from the capacity figures)."""
    server = ServerProcess(str(VOICE), env={"AH_MAX_SESSIONS": "1"})
    try:

        async def main() -> None:
            url = ws_url(server.port)
            ws = await open_conversation(url)
            t0 = time.monotonic()
            kind, info = await attempt(url)
            assert kind == "refused" and info[0] == 1013, info
            assert time.monotonic() - t0 < STEP_S
            async with httpx.AsyncClient() as http:
                r = await http.get(f"http://127.0.0.1:{server.port}/readyz")
                assert r.status_code == 503
            await ws.close()

        asyncio.run(asyncio.wait_for(main(), 30))
        server.terminate()
        code, err = server.wait()
        assert code == 0, err
        assert "refused a session to scripted_voice: at the session limit (1)" in err
    finally:
        server.close()
