"""A fake Groq API server that speaks the real wire format (shared/reference/groq-api.md), for the real
``groq`` (and ``openai``) SDKs to run against.

Why a fake: the cloud is unreachable here, and a fake is the only way to make a provider late, rate
limited or broken on cue. It is faithful where the SDK looks:

* ``POST /openai/v1/chat/completions`` with ``stream: true``: ``text/event-stream`` of ``data: <json>``
  events (no ``event:`` lines), ``chat.completion.chunk`` objects with ``x_groq.id`` on the first and
  ``x_groq.usage`` on the last, a top-level ``usage`` when ``stream_options.include_usage``, then
  ``data: [DONE]``; chunked transfer encoding on a keep-alive HTTP/1.1 connection; a client that
  closes the stream stops the generation. Without ``stream`` a ``chat.completion`` object.
* ``POST /openai/v1/audio/transcriptions``: ``multipart/form-data`` (``file``, ``model``,
  ``response_format``, ``language``, ...), answered as ``json``, ``text`` or ``verbose_json`` (segments
  with ``avg_logprob``, ``no_speech_prob``, ``compression_ratio``). The audio must be a readable WAV.
* ``GET /openai/v1/models``; ``Authorization: Bearer`` checked when ``api_key`` is set (401 as Groq).
* Error bodies ``{"error": {"message", "type", "code"}}``, ``x-ratelimit-*`` headers, ``retry-after``
  on 429.

Faults (:data:`FAULTS`), one per request, from the config's :class:`FaultPlan`:
``429`` (with ``retry-after``), ``500``, ``503``, ``timeout`` (the request is held, unanswered, for
``hang_s``), ``disconnect`` (the connection is cut in the middle of the stream), ``malformed`` (a
``data:`` line that is not JSON, mid-stream), ``stream_error`` (a ``data: {"error": ...}`` event
mid-stream, as Groq sends), ``slow`` (ten times the usual time to first token).

Run it from a script: ``with FakeGroq(GroqConfig(...)) as fake: ... fake.base_url``, or from a shell:
``python -m tests.fakes groq --port 8787 --ttft 120:250 --faults 429=0.02``.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import re
import socket
import sys
import threading
import time
import uuid
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.fakes.latency import FaultPlan, Latency

FAULTS = ("429", "500", "503", "timeout", "disconnect", "malformed", "stream_error", "slow")
CHAT_MODELS = ("llama-3.1-8b-instant", "llama-3.3-70b-versatile", "openai/gpt-oss-20b", "openai/gpt-oss-120b")
STT_MODELS = ("whisper-large-v3-turbo", "whisper-large-v3", "distil-whisper-large-v3-en")
_TOKEN = re.compile(r"\s*\S+")
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')
_NAME = re.compile(rb'name="([^"]*)"')


def _form_fields(ctype: str, body: bytes) -> dict[str, bytes]:
    """The fields of a ``multipart/form-data`` body, by name.

    The plain layout the SDKs write (RFC 7578: ``--boundary``, part headers, a blank line, the bytes)
    is split directly: the email package took ~3 ms of CPU for a 3 s upload, which under the capacity
    benchmark's load (100 sessions' uploads, every thread of this server sharing one GIL) made the fake
    slower than the provider it stands for. Anything else goes to the email parser, as before."""
    found = _BOUNDARY.search(ctype)
    if found is not None:
        delimiter = b"\r\n--" + found.group(1).encode()
        pieces = (b"\r\n" + body).split(delimiter)
        if len(pieces) >= 3 and pieces[0] == b"" and pieces[-1].startswith(b"--"):
            fields: dict[str, bytes] = {}
            for piece in pieces[1:-1]:
                head, sep, payload = piece.partition(b"\r\n\r\n")
                name = _NAME.search(head)
                if not sep or name is None or b"content-transfer-encoding" in head.lower():
                    break
                fields[name.group(1).decode()] = payload
            else:
                return fields
    msg = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + ctype.encode() + b"\r\nMIME-Version: 1.0\r\n\r\n" + body
    )
    fields = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload
    return fields


@dataclass(slots=True)
class GroqConfig:
    """What the fake answers and how late. Latencies are server-side (the client's network adds none)."""

    ttft: Latency = field(default_factory=lambda: Latency(0))
    token_gap: Latency = field(default_factory=lambda: Latency(0))
    #: Transcription: a fixed part per request, plus the audio's length over the speed factor.
    stt: Latency = field(default_factory=lambda: Latency(0))
    stt_speed_factor: float = 216.0
    replies: list[str] = field(default_factory=lambda: ["Sure, I can help with that. What else?"])
    #: Overrides ``replies``: the reply to a list of chat messages.
    reply_fn: Callable[[list[dict[str, Any]]], str] | None = None
    transcripts: list[str] = field(default_factory=lambda: ["Hello there."])
    #: Overrides ``transcripts``: the text of a WAV file's bytes.
    transcribe_fn: Callable[[bytes], str] | None = None
    avg_logprob: float = -0.15
    no_speech_prob: float = 0.01
    api_key: str | None = None
    retry_after_s: float = 0.05
    hang_s: float = 30.0
    faults: FaultPlan = field(default_factory=FaultPlan)
    seed: int = 0


@dataclass(slots=True)
class RequestLog:
    """One request as the fake saw it (perf_counter times)."""

    path: str
    t_start: float
    fault: str | None = None
    status: int = 0
    model: str = ""
    t_first_byte: float | None = None
    t_end: float | None = None
    tokens_sent: int = 0
    #: The client closed the connection before the response was complete.
    client_gone: bool = False
    audio_s: float = 0.0
    text: str = ""
    #: The latency drawn for the answer (to the first token, or to the transcript), seconds: with
    #: ``t_first_byte`` it tells how late a loaded fake was, so benchmarks can subtract their own harness.
    asked_s: float | None = None
    t_body: float | None = None  # the request body fully read: before it, the time is the client's upload


class FakeGroq:
    """The server: a threaded HTTP server on 127.0.0.1 (port 0: any free port)."""

    def __init__(self, config: GroqConfig | None = None, port: int = 0) -> None:
        self.config = config or GroqConfig()
        self.requests: list[RequestLog] = []
        self._rng = random.Random(self.config.seed)
        self._rng_lock = threading.Lock()
        self._reply_n = itertools.count()
        self._transcript_n = itertools.count()
        self._stopping = threading.Event()
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.fake = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """What ``Groq(base_url=...)`` / ``GROQ_BASE_URL`` takes (the SDK appends ``/openai/v1/...``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """What an OpenAI-style client takes (``/chat/completions`` is appended to it)."""
        return f"{self.base_url}/openai/v1"

    def start(self) -> FakeGroq:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="fake-groq", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeGroq:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers for handlers -------------------------------------------------------------------------------
    def sample(self, latency: Latency) -> float:
        with self._rng_lock:
            return latency.sample_s(self._rng)

    def reply_for(self, messages: list[dict[str, Any]]) -> str:
        if self.config.reply_fn is not None:
            return self.config.reply_fn(messages)
        replies = self.config.replies
        return replies[next(self._reply_n) % len(replies)]

    def transcript_for(self, wav_bytes: bytes) -> str:
        if self.config.transcribe_fn is not None:
            return self.config.transcribe_fn(wav_bytes)
        lines = self.config.transcripts
        return lines[next(self._transcript_n) % len(lines)]

    def wait(self, seconds: float) -> bool:
        """Sleep; ``False`` when the fake is stopping."""
        return not self._stopping.wait(seconds) if seconds > 0 else not self._stopping.is_set()

    def of(self, path: str) -> list[RequestLog]:
        return [r for r in self.requests if r.path.endswith(path)]


class _Server(ThreadingHTTPServer):
    """A thread per connection, and a listen queue as deep as a real API front end's.

    The standard library's default queue is 5 connections: when a hundred sessions open their first
    connection in the same second, the kernel drops the rest, the clients' SYN retry comes a second
    later, and the benchmark measured that second as load (issue 9's capacity runs did).
    """

    request_queue_size = 1024
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer (a cancelled speculative request) is normal, not an error."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's httpx pool expects
    # TCP_NODELAY, as API front ends set it: with Nagle's algorithm, a small write (the first SSE chunk
    # after the headers) waits for the ACK of the one before, which the client may delay by 40 ms.
    disable_nagle_algorithm = True

    @property
    def fake(self) -> FakeGroq:
        return self.server.fake  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # -- plumbing -----------------------------------------------------------------------------------------------
    def _json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _model_not_found(self, log: RequestLog) -> None:
        message = f"The model `{log.model}` does not exist or you do not have access to it."
        self._error(log, 404, message, "invalid_request_error", "model_not_found")

    def _error(self, log: RequestLog, status: int, message: str, etype: str, code: str | None = None) -> None:
        log.status = status
        headers = _ratelimit_headers()
        if status == 429:
            headers["retry-after"] = f"{self.fake.config.retry_after_s:g}"
        body: dict[str, Any] = {"error": {"message": message, "type": etype}}
        if code:
            body["error"]["code"] = code
        self._json(status, body, headers)
        log.t_end = time.perf_counter()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        """Cut the connection, as a network failure would: no closing chunk, no clean shutdown."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _authorized(self, log: RequestLog) -> bool:
        auth = self.headers.get("Authorization", "")
        key = self.fake.config.api_key
        if not auth.startswith("Bearer ") or (key is not None and auth.removeprefix("Bearer ") != key):
            self._error(log, 401, "Invalid API Key", "invalid_request_error", "invalid_api_key")
            return False
        return True

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _start(self) -> RequestLog:
        log = RequestLog(self.path, time.perf_counter())
        self.fake.requests.append(log)
        return log

    def _pre_fault(self, log: RequestLog) -> bool:
        """Apply a fault that hits before any response byte; ``True`` when it answered the request."""
        fault = log.fault
        if fault == "429":
            self._error(
                log,
                429,
                f"Rate limit reached for model `{log.model}` in organization `org_fake` on requests per "
                f"minute (RPM): Limit 30, Used 30, Requested 1. Please try again in "
                f"{self.fake.config.retry_after_s:g}s.",
                "requests",
                "rate_limit_exceeded",
            )
            return True
        if fault in ("500", "503"):
            status = int(fault)
            msg = "Internal Server Error" if status == 500 else "Service Unavailable"
            self._error(log, status, msg, "internal_server_error")
            return True
        if fault == "timeout":
            # Held without an answer until the client gives up (its deadline) or the fake stops.
            deadline = time.perf_counter() + self.fake.config.hang_s
            while time.perf_counter() < deadline and self.fake.wait(0.05):
                if _peer_closed(self.connection):
                    log.client_gone = True
                    break
            log.t_end = time.perf_counter()
            self._cut()
            return True
        return False

    # -- routes ---------------------------------------------------------------------------------------------
    def do_GET(self) -> None:
        log = self._start()
        if not self._authorized(log):
            return
        if self.path.rstrip("/") == "/openai/v1/models":
            log.status = 200
            data = [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake", "active": True}
                for m in (*CHAT_MODELS, *STT_MODELS)
            ]
            self._json(200, {"object": "list", "data": data}, _ratelimit_headers())
        else:
            self._error(log, 404, f"Unknown request URL: GET {self.path}", "invalid_request_error")

    def do_POST(self) -> None:
        log = self._start()
        body = self._body()
        log.t_body = time.perf_counter()
        if not self._authorized(log):
            return
        if self.path == "/openai/v1/chat/completions":
            self._chat(log, body)
        elif self.path == "/openai/v1/audio/transcriptions":
            self._transcribe(log, body)
        else:
            self._error(log, 404, f"Unknown request URL: POST {self.path}", "invalid_request_error")

    def _chat(self, log: RequestLog, body: bytes) -> None:
        try:
            req = json.loads(body)
            messages = req["messages"]
            log.model = str(req["model"])
        except (ValueError, KeyError, TypeError):
            self._error(log, 400, "could not parse the JSON body of your request", "invalid_request_error")
            return
        if log.model not in CHAT_MODELS:
            self._model_not_found(log)
            return
        log.fault = self.fake.config.faults.draw()
        if self._pre_fault(log):
            return
        fake = self.fake
        text = fake.reply_for(messages)
        log.text = text
        tokens = _TOKEN.findall(text)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        ttft = fake.sample(fake.config.ttft) * (10 if log.fault == "slow" else 1)
        log.asked_s = ttft
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        rid = f"req_{uuid.uuid4().hex[:26]}"
        created = int(time.time())
        usage = {
            "queue_time": 0.01,
            "prompt_tokens": prompt_tokens,
            "prompt_time": 0.002,
            "completion_tokens": len(tokens),
            "completion_time": 0.003,
            "total_tokens": prompt_tokens + len(tokens),
            "total_time": 0.005,
        }
        if not req.get("stream"):
            if not fake.wait(ttft):
                return
            log.status = 200
            self._json(
                200,
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": log.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                    "system_fingerprint": "fp_fake",
                    "x_groq": {"id": rid},
                },
                _ratelimit_headers(),
            )
            log.t_end = time.perf_counter()
            return

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            obj = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": log.model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(obj)}\n\n".encode()

        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        if not fake.wait(ttft):
            return
        log.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        for k, v in _ratelimit_headers().items():
            self.send_header(k, v)
        self.end_headers()
        cut_at = max(1, len(tokens) // 2)
        try:
            first = {"x_groq": {"id": rid}}
            if include_usage:
                first["usage"] = None
            self._chunk(chunk({"role": "assistant", "content": ""}, **first))
            log.t_first_byte = time.perf_counter()
            for i, tok in enumerate(tokens):
                if i and not fake.wait(fake.sample(fake.config.token_gap)):
                    return
                if i == cut_at and log.fault in ("disconnect", "malformed", "stream_error"):
                    if log.fault == "disconnect":
                        self._cut()
                        log.t_end = time.perf_counter()
                        return
                    if log.fault == "malformed":
                        self._chunk(
                            b'data: {"id": "' + cid.encode() + b'", "object": "chat.completion.chu\n\n'
                        )
                    else:
                        err = {"error": {"message": "Service Unavailable", "type": "internal_server_error"}}
                        self._chunk(f"data: {json.dumps(err)}\n\n".encode())
                        self._chunk(b"data: [DONE]\n\n")
                        self._chunk(b"")
                        log.t_end = time.perf_counter()
                        return
                self._chunk(chunk({"content": tok}))
                log.tokens_sent += 1
            last_extra: dict[str, Any] = {"x_groq": {"id": rid, "usage": usage}}
            if include_usage:
                last_extra["usage"] = {k: v for k, v in usage.items() if k.endswith("tokens")}
            self._chunk(chunk({}, "stop", **last_extra))
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")  # the closing zero-length chunk
        except (BrokenPipeError, ConnectionResetError):
            log.client_gone = True  # the client closed the stream: generation stops
            self.close_connection = True
        finally:
            log.t_end = time.perf_counter()

    def _transcribe(self, log: RequestLog, body: bytes) -> None:
        ctype = self.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            self._error(log, 400, "request Content-Type must be multipart/form-data", "invalid_request_error")
            return
        fields = _form_fields(ctype, body)
        log.model = fields.get("model", b"").decode()
        if "file" not in fields and "url" not in fields:
            self._error(log, 400, "file or url must be provided", "invalid_request_error")
            return
        if log.model not in STT_MODELS:
            self._model_not_found(log)
            return
        fmt = fields.get("response_format", b"json").decode()
        if fmt not in ("json", "text", "verbose_json"):
            self._error(log, 400, f"response_format `{fmt}` is not supported", "invalid_request_error")
            return
        audio = fields.get("file", b"")
        try:
            with wave.open(io.BytesIO(audio)) as w:
                duration = w.getnframes() / w.getframerate()
        except (wave.Error, EOFError):
            self._error(
                log, 400, "could not process file - is it a valid media file?", "invalid_request_error"
            )
            return
        log.audio_s = duration
        log.fault = self.fake.config.faults.draw()
        if log.fault in ("disconnect", "malformed", "stream_error"):
            # A non-streaming answer has no middle: cut it before the body, or garble the body.
            if log.fault == "disconnect":
                self._cut()
                log.t_end = time.perf_counter()
                return
            log.status = 200
            data = b'{"text": " Hello wor'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            log.t_end = time.perf_counter()
            return
        if self._pre_fault(log):
            return
        fake = self.fake
        took = fake.sample(fake.config.stt) + duration / fake.config.stt_speed_factor
        log.asked_s = took * (10 if log.fault == "slow" else 1)
        if not fake.wait(log.asked_s):
            return
        log.t_first_byte = time.perf_counter()
        text = fake.transcript_for(audio)
        log.text = text
        rid = f"req_{uuid.uuid4().hex[:26]}"
        spoken = " " + text.strip() if text.strip() else ""
        log.status = 200
        if fmt == "text":
            data = (spoken + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        elif fmt == "json":
            self._json(200, {"text": spoken, "x_groq": {"id": rid}})
        else:
            segments = []
            if spoken:
                segments.append(
                    {
                        "id": 0,
                        "seek": 0,
                        "start": 0.0,
                        "end": round(duration, 2),
                        "text": spoken,
                        "tokens": [50365 + i for i in range(len(spoken.split()) + 1)],
                        "temperature": 0.0,
                        "avg_logprob": fake.config.avg_logprob,
                        "compression_ratio": 0.8,
                        "no_speech_prob": fake.config.no_speech_prob,
                    }
                )
            self._json(
                200,
                {
                    "task": "transcribe",
                    "language": "English",
                    "duration": round(duration, 2),
                    "text": spoken,
                    "segments": segments,
                    "x_groq": {"id": rid},
                },
            )
        log.t_end = time.perf_counter()


def _ratelimit_headers() -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": "14400",
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-requests": "14399",
        "x-ratelimit-remaining-tokens": "5800",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-reset-tokens": "2s",
    }


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the client has closed its end (a non-blocking peek reads EOF)."""
    try:
        sock.setblocking(False)
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        finally:
            sock.setblocking(True)
    except BlockingIOError:
        return False
    except OSError:
        return True
