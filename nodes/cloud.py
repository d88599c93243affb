"""What every cloud-provider node shares: API keys, deadlines, error events and ``ah doctor`` probes.

Not a node type. The provider nodes (``stt.groq``, ``llm.groq``, ``llm.openai_compatible``,
``tts.elevenlabs``) keep one set of rules through it, so that they fail and report alike:

* **Keys** come from the environment (``GROQ_API_KEY``, ``ELEVENLABS_API_KEY``, ...), never from graph
  files (graphs are shared; keys are not). A missing key fails the session at graph start (``setup``)
  with a message that names the node and the variable.
* **Every provider call has a deadline** (:func:`deadline`), beyond the SDK's own per-request
  timeout, because an SDK may retry (and sleep ``retry-after``) inside one call.
* **One TLS context per process** (:func:`tls_context`): loading the CA bundle costs ~20 ms of CPU,
  and the SDKs do it for every client they make, i.e. for every session, on the event loop; shared,
  it is paid once (experiments/capacity.py found it was a fifth of the server's CPU at 40 sessions).
* **One recipe for the SDKs' httpx client** (:func:`provider_http_client`): that context, keep-alive
  long enough to outlast the pause between turns, and in-memory uploads sent in one write.
* **A failed call is an event, not a crash**: :func:`error_frame` makes the ``error`` control frame
  that ``protocol_out`` sends to the client, naming the node and the provider's own message; the
  session and the conversation go on.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import ssl
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection

from ah.runtime.sdk import ControlFrame, DoctorCheck
from ah.runtime.websocket_cycles import release_closed


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The process's one client TLS context, as httpx would make it (certifi, SSL_CERT_FILE/DIR).

    An ``SSLContext`` is safe to share between connections; only making one is expensive."""
    return httpx.create_ssl_context()


#: The groq SDK's own default pool (``groq._constants.DEFAULT_CONNECTION_LIMITS``; a transport given to
#: httpx replaces the one it would have built with them), but with a longer keep-alive.
#: Idle connections are kept 50 s, not httpx's 5: a turn comes every several seconds (the agent speaks,
#: the user thinks), and after 5 s each request paid a new connection, a TLS handshake with a real
#: provider, on the critical path (under 60 s, the idle timeout of common load balancers).
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=50.0)


class OneWriteBody(httpx.AsyncBaseTransport):
    """Sends a request body that is in memory (a multipart upload of bytes) as one write.

    httpx hands httpcore a multipart body part by part (a boundary, headers, the bytes, a CRLF: ~16
    pieces for a transcription), and each write waits its turn on the event loop (anyio checks for
    cancellation before every send). Under load a turn of the loop is a millisecond or more, so an
    upload of a few hundred kB took 20-30 ms at p95 at 100 sessions (experiments/capacity.py's
    ``stt_upload``), on the critical path of every turn. Bodies that are not in memory (a file
    stream: iterating it would read it on the loop) pass through untouched."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        stream = request.stream
        if isinstance(stream, httpx.SyncByteStream) and not isinstance(stream, httpx.ByteStream):
            if _in_memory(stream):
                request.stream = httpx.ByteStream(b"".join(stream))
        response = await self._inner.handle_async_request(request)
        if isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _UnbindOnClose(response.stream, response)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


class _UnbindOnClose(httpx.AsyncByteStream):
    """Lets a closed response go by reference counting.

    httpx's client wraps each response's stream in one that points back at the response (to time
    it), a cycle: every provider call's response, and its request with the uploaded audio, waited for
    a full collection. Closed, the response no longer needs its stream, so this drops it."""

    _CLOSED = httpx.ByteStream(b"")

    def __init__(self, inner: httpx.AsyncByteStream, response: httpx.Response) -> None:
        self._inner = inner
        self._response = weakref.ref(response)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._inner.__aiter__()  # the inner stream's own iterator: no extra hop per chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            response = self._response()
            if response is not None:
                response.stream = self._CLOSED


def _in_memory(stream: Any) -> bool:
    """A multipart body whose every file is bytes or str (what the SDKs make from ``(name, bytes)``)."""
    fields = getattr(stream, "fields", None)
    return fields is not None and all(isinstance(getattr(f, "file", b""), (bytes, str)) for f in fields)


def provider_http_client() -> httpx.AsyncClient:
    """The httpx client a provider SDK gets: the process's TLS context (:func:`tls_context`), the groq
    SDK's pool limits and redirects, and bodies in one write (:class:`OneWriteBody`)."""
    transport = OneWriteBody(httpx.AsyncHTTPTransport(verify=tls_context(), limits=_LIMITS))
    return httpx.AsyncClient(transport=transport, follow_redirects=True)


class ReleasedOnClose(ClientConnection):
    """A websockets client connection that reference counting frees once it is closed
    (:func:`~ah.runtime.websocket_cycles.release_closed`): a node that opens a socket per reply
    (``tts.elevenlabs``) left a few a session, with their compression state, for a full collection."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        release_closed(self.protocol)


class MissingKey(RuntimeError):
    """An API key the node needs is not in the environment."""


def require_key(env: str, node: str, what: str) -> str:
    """The value of ``env``; :class:`MissingKey` naming the node and the fix when it is unset."""
    key = os.environ.get(env, "").strip()
    if not key:
        raise MissingKey(
            f"{node}: {what} needs an API key: set the environment variable {env} (export {env}=...)"
        )
    return key


class Deadline(TimeoutError):
    """A provider call ran past its deadline."""


def describe(exc: BaseException) -> str:
    """One line about a provider failure, with the provider's own message when it sent one."""
    status = getattr(exc, "status_code", None)
    body = getattr(exc, "body", None)
    message = ""
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            message = str(err.get("message", ""))
    if not message:
        message = str(exc) or type(exc).__name__
    name = type(exc).__name__
    return f"{name} (HTTP {status}): {message}" if status else f"{name}: {message}"


def error_frame(node: str, error_type: str, message: str, scope: int = 0, code: int = 1011) -> ControlFrame:
    """The ``error`` event for the client: ``protocol_out`` sends it as the protocol's ``error``."""
    return ControlFrame(
        "error", {"error_type": error_type, "code": code, "message": f"{node}: {message}"}, scope=scope
    )


@dataclass(slots=True)
class Timing:
    """Monotonic timestamps of one provider call, for metrics events."""

    t0: float

    @classmethod
    def start(cls) -> Timing:
        return cls(time.perf_counter())

    def ms(self) -> float:
        return round((time.perf_counter() - self.t0) * 1000, 1)


async def deadline(seconds: float, work: Any) -> Any:
    """Await ``work`` for at most ``seconds``; :class:`Deadline` after that."""
    try:
        async with asyncio.timeout(seconds):  # not wait_for: no task of its own, no extra turns of the loop
            return await work
    except TimeoutError:
        raise Deadline(f"no answer within the deadline of {seconds:g} s") from None


# -- ah doctor ---------------------------------------------------------------------------------------------------
def key_check(env: str, what: str) -> tuple[DoctorCheck, str | None]:
    key = os.environ.get(env, "").strip()
    if not key:
        return DoctorCheck(False, f"{env} is not set: export {env}=... ({what} needs it)"), None
    return DoctorCheck(True, f"{env} is set ({len(key)} characters)"), key


async def http_check(url: str, headers: dict[str, str], what: str, timeout_s: float = 5.0) -> DoctorCheck:
    """GET ``url``: reachable, and does it accept the key?"""
    t = Timing.start()
    resp = await _get(url, headers, what, timeout_s)
    if isinstance(resp, DoctorCheck):
        return resp
    return DoctorCheck(True, f"{what}: {url} answered HTTP {resp.status_code} in {t.ms():g} ms")


async def models_check(url: str, headers: dict[str, str], model: str, what: str) -> DoctorCheck:
    """GET an OpenAI-style ``/models`` list: reachable, key accepted, and is ``model`` offered?"""
    t = Timing.start()
    resp = await _get(url, headers, what, 5.0)
    if isinstance(resp, DoctorCheck):
        return resp
    try:
        ids = [str(m.get("id")) for m in resp.json().get("data", [])]
    except (ValueError, AttributeError):
        return DoctorCheck(False, f"{what}: {url} did not answer a model list: {resp.text[:80]!r}")
    if model not in ids:
        shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
        return DoctorCheck(False, f"{what}: model {model!r} is not offered at {url} (offered: {shown})")
    return DoctorCheck(
        True, f"{what}: {url} reachable in {t.ms():g} ms, key accepted, model {model!r} offered"
    )


async def _get(
    url: str, headers: dict[str, str], what: str, timeout_s: float
) -> httpx.Response | DoctorCheck:
    """GET ``url`` for a doctor check: the response when it succeeded, else the failed check saying why
    in one line (unreachable, key refused, or an HTTP error with the provider's own message)."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            resp = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        return DoctorCheck(False, f"{what}: cannot reach {url}: {type(exc).__name__}: {exc}")
    if resp.status_code in (401, 403):
        return DoctorCheck(
            False, f"{what}: {url} refused the key (HTTP {resp.status_code}): {_message(resp)}"
        )
    if resp.status_code >= 400:
        return DoctorCheck(False, f"{what}: {url} answered HTTP {resp.status_code}: {_message(resp)}")
    return resp


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except (ValueError, json.JSONDecodeError):
        return resp.text[:120].strip()
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if isinstance(body.get("detail"), dict):
            return str(body["detail"].get("message", body["detail"]))
    return str(body)[:120]
