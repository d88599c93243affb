"""A real load balancer in front (issue 9 point 4): Debian's nginx with ``deploy/nginx.conf`` in
front of two ``ah run`` processes; 40 conversations through it; one backend is killed mid-run.

Shown: the other backend's conversations go on untouched, the killed backend's conversations end
promptly (none hangs), and new conversations succeed (nginx retries the dead backend's refused
connect on the live one and leaves the dead one out). Skipped where nginx is not installed
(``make test`` installs it with apt). Which backend took a conversation is read from the
``X-Ah-Instance`` header that nginx passes through from the backend's handshake response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.server_helpers import INIT, ROOT, STEP_S, VOICE, ServerProcess, recv_json, text_turn

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx not installed (apt-get install nginx)")
CONF = ROOT / "deploy" / "nginx.conf"
SESSIONS = 40
NEW_SESSIONS = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def nginx_conf(tmp: Path, listen: int, backends: list[int]) -> Path:
    """deploy/nginx.conf as it is, with its backend lines and listen port replaced, and nginx's temp
    files kept under ``tmp`` (so it also runs without root)."""
    text = CONF.read_text()
    servers = "".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;\n" for p in backends)
    text, n = re.subn(
        r"(# ah-backends-begin[^\n]*\n).*?(\s*# ah-backends-end)",
        lambda m: m[1] + servers + m[2],
        text,
        flags=re.S,
    )
    assert n == 1, "deploy/nginx.conf lost its ah-backends markers"
    text, n = re.subn(r"listen \d+;\s*# ah-listen", f"listen 127.0.0.1:{listen};", text)
    assert n == 1, "deploy/nginx.conf lost its ah-listen marker"
    temps = "".join(
        f"    {kind}_temp_path {tmp / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    text = text.replace("http {\n", "http {\n" + temps, 1)
    path = tmp / "nginx.conf"
    path.write_text(text)
    return path


class Nginx:
    def __init__(self, tmp: Path, conf: Path, port: int) -> None:
        self.port = port
        self.log = tmp / "access.log"
        self.errors = tmp / "error.log"
        self.proc = subprocess.Popen(
            [
                str(NGINX),
                "-p",
                str(tmp),
                "-c",
                str(conf),
                "-e",
                str(self.errors),
                "-g",
                f"daemon off; pid {tmp / 'nginx.pid'};",
            ],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + STEP_S
        while True:
            assert self.proc.poll() is None, f"nginx exited: {self.errors.read_text()}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.05)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def backend_pid(ws: ClientConnection) -> int:
    assert ws.response is not None
    return int(ws.response.headers["X-Ah-Instance"].rsplit("/", 1)[1])


async def open_via(url: str) -> ClientConnection:
    ws = await connect(url, open_timeout=STEP_S)
    await ws.send(json.dumps(INIT))
    first = await recv_json(ws)
    assert first["type"] == "conversation_initiation_metadata", first
    return ws


def test_nginx_in_front_of_two_backends_one_killed_mid_run(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        a = ServerProcess(str(VOICE))
        stack.callback(a.close)
        b = ServerProcess(str(VOICE))
        stack.callback(b.close)
        port = free_port()
        nginx = Nginx(tmp_path, nginx_conf(tmp_path, port, [a.port, b.port]), port)
        stack.callback(nginx.close)
        pid_a, pid_b = a.proc.pid, b.proc.pid
        on_b_total: list[int] = []

        async def main() -> None:
            url = f"ws://127.0.0.1:{port}/v1/convai/conversation?agent_id=scripted_voice"
            async with httpx.AsyncClient() as http:  # plain HTTP goes through too
                r = await http.get(f"http://127.0.0.1:{port}/readyz")
                assert (r.status_code, r.text) == (200, "ready\n")
            opened = asyncio.Event()
            killed = asyncio.Event()
            ready = 0

            async def conversation(i: int) -> tuple[int, str]:
                nonlocal ready
                await asyncio.sleep(i * 0.01)
                ws = await open_via(url)
                pid = backend_pid(ws)
                assert "sunny" in await text_turn(ws)
                ready += 1
                if ready == SESSIONS:
                    opened.set()
                await killed.wait()
                try:
                    # Two more turns: a session on the live backend must not notice anything.
                    assert "not much more" in await text_turn(ws, "Tell me more.")
                    assert "sunny" in await text_turn(ws, "Stop there.")
                    await ws.close()
                    return pid, "finished"
                except ConnectionClosed:
                    return pid, "cut"
                except TimeoutError:
                    return pid, "hung"

            tasks = [asyncio.create_task(conversation(i)) for i in range(SESSIONS)]
            await asyncio.wait_for(opened.wait(), 20)
            os.kill(pid_a, signal.SIGKILL)
            t_kill = time.monotonic()
            killed.set()
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 20)
            per_backend = Counter(outcomes)
            # least_conn spread the 40 over both backends.
            on_a = per_backend[(pid_a, "cut")]
            on_b = per_backend[(pid_b, "finished")]
            assert on_a + on_b == SESSIONS, per_backend
            assert on_a >= SESSIONS // 4 and on_b >= SESSIONS // 4, per_backend
            on_b_total.append(on_b)
            assert time.monotonic() - t_kill < 2 * STEP_S  # nobody waited for a timeout
            # New conversations after the kill all succeed, on the live backend.
            fresh = await asyncio.wait_for(asyncio.gather(*(open_via(url) for _ in range(NEW_SESSIONS))), 20)
            assert {backend_pid(ws) for ws in fresh} == {pid_b}
            replies = await asyncio.gather(*(text_turn(ws) for ws in fresh))
            assert all("sunny" in r for r in replies)
            for ws in fresh:
                await ws.close()

        asyncio.run(main())
        b.terminate()
        code, err = b.wait()
        assert code == 0, err
        ended = re.findall(r"session \S+ \(scripted_voice\) ended after [\d.]+ s: (.*)", err)
        assert len(ended) == on_b_total[0] + NEW_SESSIONS and set(ended) == {"ok"}, ended
        # Passive health check at work: the first new conversation was sent to the dead backend (it had
        # the fewest connections), refused, and retried on the live one in the same request.
        log = nginx.log.read_text()
        assert f"upstream=127.0.0.1:{a.port}, 127.0.0.1:{b.port} upstream_status=502, 101" in log, log
