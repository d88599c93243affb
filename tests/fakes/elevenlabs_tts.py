"""A fake ElevenLabs text-to-speech WebSocket (shared/reference/elevenlabs-tts-ws.md).

Why a fake: the service is unreachable here, and only a fake can be slow, drop the socket or send
garbage on cue. It keeps the protocol's semantics where a client depends on them:

* ``/v1/text-to-speech/{voice_id}/stream-input`` (one context) and ``/multi-stream-input`` (up to 5
  contexts by ``context_id``), with ``model_id``, ``output_format`` (``pcm_16000`` only: raw s16le
  mono), ``inactivity_timeout`` (default 20 s) and ``sync_alignment`` query parameters.
* The key: ``xi-api-key`` header, or ``xi-api-key`` / ``xi_api_key`` in the first message, or the
  ``authorization`` query parameter; when ``api_key`` is set a wrong one gets an error frame and 1008.
* The first message of a context is the initialisation (``text: " "``, voice settings, generation
  config). Text is buffered until ``chunk_length_schedule`` is met, ``try_trigger_generation``,
  ``flush``, or the end of input (``{"text": ""}`` on stream-input, ``close_socket`` on
  multi-stream-input). On multi-stream-input ``{"text": "", "context_id"}`` is a keepalive and
  ``close_context`` stops that context's audio at once and answers ``isFinal`` for it.
* Audio: a deterministic tone, ``ms_per_char`` per character, sent in ``chunk_ms`` chunks as base64 with
  ``alignment`` and ``normalizedAlignment`` (``chars``, ``charStartTimesMs``, ``charsDurationsMs``,
  relative to the chunk), ``contextId`` on multi-stream-input; ``{"isFinal": true}`` at the end.
* Inactivity: no message for ``inactivity_timeout`` seconds gets the ``input_timeout_exceeded`` error
  frame and a close with 1008, word for word as the service sends it.

Latency: ``connect`` (the handshake: TLS and upgrade, held in ``process_request``), ``ttfa`` (each
generation's time to first audio), then audio at ``rtf`` times real time. Faults (:data:`FAULTS`) hit a
generation: ``disconnect`` (the TCP connection is dropped after the first chunk), ``error`` (an error
frame and close 1011), ``malformed`` (a frame that is not JSON before the audio), ``timeout`` (no audio,
ever), ``slow`` (ten times the time to first audio); ``reject`` (``connect_faults``) answers the
handshake with HTTP 503.

Run it: ``with FakeElevenLabsTts(TtsConfig(...)) as fake: fake.url``, or
``python -m tests.fakes elevenlabs --port 8788 --ttfa 150:250``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import random
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from tests.fakes.latency import FaultPlan, Latency

FAULTS = ("disconnect", "error", "malformed", "timeout", "slow")
CONNECT_FAULTS = ("reject",)
SR = 16000
DEFAULT_SCHEDULE = (120, 160, 250, 290)
TIMEOUT_MESSAGE = (
    "Have not received a new text input within the timeout of {t:.1f} seconds. Streaming input "
    "terminated. Please make sure to either feed the input in the timely manner, or to send the end "
    'of input text (empty string "") when done.'
)


@dataclass(slots=True)
class TtsConfig:
    connect: Latency = field(default_factory=lambda: Latency(0))
    ttfa: Latency = field(default_factory=lambda: Latency(0))
    rtf: float = 20.0  # audio seconds made per second, after the first chunk
    ms_per_char: float = 60.0
    chunk_ms: int = 100
    api_key: str | None = None
    faults: FaultPlan = field(default_factory=FaultPlan)
    connect_faults: FaultPlan = field(default_factory=FaultPlan)
    seed: int = 0


@dataclass(slots=True)
class Generation:
    """One generation (a flushed or scheduled piece of text) as the fake made it."""

    context: str
    text: str
    t_request: float
    fault: str | None = None
    t_first_audio: float | None = None
    chunks: int = 0
    asked_s: float | None = None  # the time to first audio drawn for it (see groq.RequestLog.asked_s)
    stopped: bool = False  # its context was closed (barge-in) before it finished


@dataclass(slots=True)
class ConnLog:
    path: str
    t_open: float
    multi: bool
    messages: list[dict[str, Any]] = field(default_factory=list)
    t_close: float | None = None
    close_code: int | None = None


@dataclass(eq=False)
class _Context:
    cid: str
    buffer: str = ""
    schedule: tuple[int, ...] = DEFAULT_SCHEDULE
    generations: int = 0
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    closed: bool = False


class FakeElevenLabsTts:
    """The server, on its own event loop in a thread (so a test's loop and the fake never contend)."""

    def __init__(self, config: TtsConfig | None = None, port: int = 0) -> None:
        self.config = config or TtsConfig()
        self.connections: list[ConnLog] = []
        self.generations: list[Generation] = []
        self._rng = random.Random(self.config.seed)
        self._port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The base URL a client puts in front of ``/v1/text-to-speech/...`` (``ws://127.0.0.1:PORT``)."""
        return f"ws://127.0.0.1:{self._port}"

    def start(self) -> FakeElevenLabsTts:
        self._thread = threading.Thread(target=self._main, name="fake-elevenlabs", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake ElevenLabs server did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeElevenLabsTts:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(
            self._handle, "127.0.0.1", self._port, process_request=self._process_request, backlog=1024
        ) as srv:
            self._server = srv
            self._port = next(iter(srv.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()
            srv.close()  # closes every connection (1001)

    # -- handshake ----------------------------------------------------------------------------------------------
    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        parts = path.strip("/").split("/")
        if (
            len(parts) != 4
            or parts[:2] != ["v1", "text-to-speech"]
            or parts[3]
            not in (
                "stream-input",
                "multi-stream-input",
            )
        ):
            return conn.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        await asyncio.sleep(self.config.connect.sample_s(self._rng))
        if self.config.connect_faults.draw() == "reject":
            return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
        return None

    # -- a connection -------------------------------------------------------------------------------------------
    async def _handle(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        url = urlsplit(ws.request.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        multi = url.path.endswith("/multi-stream-input")
        log = ConnLog(url.path, time.perf_counter(), multi)
        self.connections.append(log)
        fmt = query.get("output_format", "pcm_16000")
        timeout = float(query.get("inactivity_timeout", "20"))
        key = ws.request.headers.get("xi-api-key") or query.get("authorization", "").removeprefix("Bearer ")
        contexts: dict[str, _Context] = {}
        last_input = [time.monotonic()]
        authed = False

        async def send(obj: dict[str, Any]) -> None:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps(obj))

        async def fail(error: str, message: str, code: int) -> None:
            await send({"message": message, "error": error, "code": code})
            await ws.close(code, message[:120])

        async def watchdog() -> None:
            while True:
                left = last_input[0] + timeout - time.monotonic()
                if left <= 0:
                    await fail("input_timeout_exceeded", TIMEOUT_MESSAGE.format(t=timeout), 1008)
                    return
                await asyncio.sleep(min(left, 0.5))

        def context(cid: str, init: dict[str, Any] | None) -> _Context:
            ctx = contexts.get(cid)
            if ctx is None or ctx.closed:
                ctx = _Context(cid)
                cfg = (init or {}).get("generation_config") or {}
                if cfg.get("chunk_length_schedule"):
                    ctx.schedule = tuple(int(x) for x in cfg["chunk_length_schedule"])
                contexts[cid] = ctx
                ctx.task = asyncio.get_running_loop().create_task(self._generate(ws, ctx, multi))
            return ctx

        def trigger(ctx: _Context, force: bool) -> None:
            threshold = ctx.schedule[min(ctx.generations, len(ctx.schedule) - 1)]
            if ctx.buffer.strip() and (force or len(ctx.buffer) >= threshold):
                ctx.queue.put_nowait(ctx.buffer)
                ctx.buffer = ""
                ctx.generations += 1

        dog = asyncio.get_running_loop().create_task(watchdog())
        try:
            if fmt != "pcm_16000":
                await fail(
                    "invalid_output_format", f"output_format {fmt!r} is not supported by the fake", 1008
                )
                return
            async for raw in ws:
                last_input[0] = time.monotonic()
                try:
                    msg = json.loads(raw)
                    if not isinstance(msg, dict):
                        raise ValueError
                except ValueError:
                    await fail(
                        "invalid_input_message",
                        "Could not parse input message, make sure it is a json and follows the schema "
                        "outlined in protocol.",
                        1008,
                    )
                    return
                log.messages.append(msg)
                if not authed:
                    key = key or msg.get("xi-api-key") or msg.get("xi_api_key") or ""
                    if self.config.api_key is not None and key != self.config.api_key:
                        await fail("invalid_api_key", "Invalid API key", 1008)
                        return
                    if not key:
                        await fail("missing_api_key", "No API key was provided", 1008)
                        return
                    authed = True
                if multi:
                    if msg.get("close_socket"):
                        for ctx in contexts.values():
                            trigger(ctx, True)
                            ctx.queue.put_nowait(None)
                        await asyncio.gather(*(c.task for c in contexts.values() if c.task))
                        await ws.close(1000)
                        return
                    cid = str(msg.get("context_id") or "default")
                    if msg.get("close_context"):
                        ctx_or_none = contexts.get(cid)
                        if ctx_or_none is not None and not ctx_or_none.closed:
                            ctx_or_none.closed = True
                            if ctx_or_none.task is not None:
                                ctx_or_none.task.cancel()
                            await send({"isFinal": True, "contextId": cid})
                        continue
                    text = msg.get("text")
                    new = cid not in contexts or contexts[cid].closed
                    ctx = context(cid, msg if new else None)
                    if isinstance(text, str) and text and not (new and text == " "):
                        ctx.buffer += text
                    trigger(ctx, bool(msg.get("flush") or msg.get("try_trigger_generation")))
                else:
                    ctx = context("", msg if not contexts else None)
                    text = msg.get("text")
                    if text == "":
                        trigger(ctx, True)
                        ctx.queue.put_nowait(None)
                        if ctx.task is not None:
                            await ctx.task
                        await send({"isFinal": True})
                        await ws.close(1000)
                        return
                    if isinstance(text, str) and not (len(log.messages) == 1 and text == " "):
                        ctx.buffer += text
                    trigger(ctx, bool(msg.get("flush") or msg.get("try_trigger_generation")))
        except ConnectionClosed:
            pass
        finally:
            dog.cancel()
            for ctx in contexts.values():
                if ctx.task is not None:
                    ctx.task.cancel()
            log.t_close = time.perf_counter()
            log.close_code = ws.close_code

    async def _generate(self, ws: ServerConnection, ctx: _Context, multi: bool) -> None:
        """Speak the context's pieces in order."""
        cfg = self.config
        chunk_n = SR * cfg.chunk_ms // 1000
        while (text := await ctx.queue.get()) is not None:
            gen = Generation(ctx.cid, text, time.perf_counter(), cfg.faults.draw())
            self.generations.append(gen)
            try:
                gen.asked_s = cfg.ttfa.sample_s(self._rng) * (10 if gen.fault == "slow" else 1)
                await asyncio.sleep(gen.asked_s)
                if gen.fault == "timeout":
                    await asyncio.Event().wait()  # never answers; the client's deadline must act
                if gen.fault == "error":
                    await ws.send(
                        json.dumps(
                            {
                                "message": "An internal error occurred.",
                                "error": "internal_error",
                                "code": 1011,
                            }
                        )
                    )
                    await ws.close(1011, "An internal error occurred.")
                    return
                if gen.fault == "malformed":
                    await ws.send('{"audio": "UklGR' + ("" if multi else ", ") + "garbage")
                pcm, starts, durs = _speak(text, cfg.ms_per_char)
                n_chunks = max(1, math.ceil(len(pcm) / chunk_n))
                for k in range(n_chunks):
                    a, b = k * chunk_n, min(len(pcm), (k + 1) * chunk_n)
                    t0, t1 = a * 1000 / SR, b * 1000 / SR
                    idx = [i for i, s in enumerate(starts) if t0 <= s < t1 or (k == n_chunks - 1 and s >= t1)]
                    align = {
                        "chars": [text[i] for i in idx],
                        "charStartTimesMs": [round(starts[i] - t0) for i in idx],
                        "charsDurationsMs": [round(durs[i]) for i in idx],
                    }
                    msg: dict[str, Any] = {
                        "audio": base64.b64encode(pcm[a:b].tobytes()).decode("ascii"),
                        "isFinal": None,
                        "normalizedAlignment": align,
                        "alignment": align,
                    }
                    if multi:
                        msg["contextId"] = ctx.cid
                    await ws.send(json.dumps(msg))
                    gen.chunks += 1
                    if gen.t_first_audio is None:
                        gen.t_first_audio = time.perf_counter()
                    if gen.fault == "disconnect":
                        ws.transport.abort()  # no close frame: a dropped connection
                        return
                    await asyncio.sleep((b - a) / SR / cfg.rtf)
            except asyncio.CancelledError:
                gen.stopped = True
                raise
            except ConnectionClosed:
                return


def _speak(text: str, ms_per_char: float) -> tuple[np.ndarray, list[float], list[float]]:
    """A tone ``ms_per_char`` long per character (silence for white space), and each character's timing."""
    n = round(len(text) * ms_per_char * SR / 1000)
    t = np.arange(n) / SR
    wave = 0.3 * np.sin(2 * np.pi * 220 * t)
    per = round(ms_per_char * SR / 1000)
    for i, ch in enumerate(text):
        if ch.isspace():
            wave[i * per : (i + 1) * per] = 0.0
    pcm = np.round(wave * 32767).astype("<i2")
    starts = [i * ms_per_char for i in range(len(text))]
    return pcm, starts, [ms_per_char] * len(text)
