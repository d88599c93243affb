"""Shared pieces of the JavaScript client tests: the server in a thread, the Node scripts under
``tests/js/`` (the official ``@elevenlabs/client`` and ``playwright-core``, pinned in
``tests/js/package-lock.json``), Debian's Chromium, and the fake microphone's WAV.

A missing ``node``/``npm`` or ``chromium`` skips with the reason (``make test`` installs them);
missing ``node_modules`` are installed here with ``npm ci``, as ``make test`` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ah.runtime.graph_loader import load_graph
from ah.server.app import AgentServer, ServerConfig

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "tests" / "js"
GRAPH = ROOT / "tests" / "graphs" / "scripted_voice.yaml"
AGENT = "scripted_voice"
SR = 16000
MS_PER_CHAR = 40  # tts.tone in the graph

LINE_1 = "What is the weather like?"
LINE_2 = "Tell me more."
REPLY_1 = "It is sunny today, Ana. Expect clear skies all afternoon and a light breeze in the evening."
REPLY_2 = "There is not much more to say about it, really."


@contextmanager
def server_in_thread() -> Iterator[AgentServer]:
    """The scripted voice agent on a free port, its event loop in a thread of its own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="ah-server", daemon=True)
    thread.start()
    server = AgentServer({AGENT: load_graph(GRAPH)}, ServerConfig(port=0))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.drain(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def node() -> str:
    """The node binary, with tests/js/node_modules installed; skips when Node.js or npm is missing."""
    exe, npm = shutil.which("node"), shutil.which("npm")
    if exe is None or npm is None:
        pytest.skip("Node.js and npm are not installed (`make test` installs what it can; see the Makefile)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    major, minor = (int(x) for x in version.lstrip("v").split(".")[:2])
    if (major, minor) < (20, 10):
        pytest.skip(f"Node.js {version} is too old: the client needs a WebSocket global (Node >= 20.10)")
    if not (JS / "node_modules" / "@elevenlabs" / "client").is_dir():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--prefix", str(JS)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"npm ci --prefix tests/js failed:\n{done.stdout}\n{done.stderr}"
    return exe


def chromium() -> str:
    """Debian's Chromium; skips when it is missing."""
    path = os.environ.get("AH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.skip("chromium is not installed (`apt-get install -y chromium`; `make test` does it as root)")
    return path


def run_node(script: str, *args: object, timeout: float = 40, browser: str | None = None) -> Any:
    """Run ``tests/js/SCRIPT ARGS`` under Node 20+ and parse its output: one JSON object, or JSON lines."""
    env = {**os.environ, **({"AH_CHROMIUM": browser} if browser else {})}
    done = subprocess.run(
        [node(), "--experimental-websocket", "--no-warnings", str(JS / script), *map(str, args)],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert done.returncode == 0, (
        f"{script} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"{script} printed nothing:\n{done.stderr[-4000:]}"
    if len(lines) == 1:
        return json.loads(lines[0])
    return [json.loads(line) for line in lines]


def microphone_wav(path: Path) -> Path:
    """What Chromium's fake microphone plays, looping: 0.5 s silence, 0.8 s of "speech", 2.2 s silence.

    The speech is a harmonic tone whose level moves at a syllable rate, so the browser's noise
    suppression keeps it. Looped, the next burst lands while the agent's first reply (3.6 s of audio)
    is playing: a barge-in.
    """

    def speech(ms: int, hz: float) -> np.ndarray:
        t = np.arange(SR * ms // 1000) / SR
        level = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
        wave_ = (
            np.sin(2 * np.pi * hz * t) + 0.5 * np.sin(4 * np.pi * hz * t) + 0.25 * np.sin(6 * np.pi * hz * t)
        )
        return 0.4 * level * wave_ / 1.75

    def silence(ms: int) -> np.ndarray:
        return np.zeros(SR * ms // 1000)

    pcm = np.concatenate([silence(500), speech(800, 200.0), silence(2200)])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((pcm * 32767).astype("<i2").tobytes())
    return path
