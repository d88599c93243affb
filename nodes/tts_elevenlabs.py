"""``tts.elevenlabs``: ElevenLabs text-to-speech over its multi-stream-input WebSocket.

One WebSocket per session, opened when the session starts (``warm: true``) and kept alive, with one
*context* per agent reply (``multi-stream-input``, shared/reference/elevenlabs-tts-ws.md §2), so a
reply starts without a connection set-up (TCP, TLS and the upgrade: several network round trips). The
next reply's context is initialised ahead of time, and a keepalive on it every ``keepalive_s`` keeps
the socket from the service's inactivity timeout. With ``warm: false`` each reply opens its own
socket and closes it after (the benchmark's baseline). ``endpoint: stream-input`` uses the
single-context endpoint instead: a socket per reply, the next one opened and initialised as soon as a
reply takes the current one (so with ``warm`` a reply still finds its socket open), closed to end the
reply or to stop it on a barge-in; its keepalive is a single space.

* **Text**: the reply's deltas are cut into sentences (and long sentences' clauses) by
  :class:`~ah.nodes.tts_stream.TextSplitter`; each goes out with ``flush: true`` as soon as it is
  complete, so the service starts speaking the first sentence while the LLM writes the rest. With
  ``first_piece_chars`` the first piece goes out sooner still, at the first word boundary past that
  many characters (a few words, ~1.5 s of speech: its audio lasts longer than the next piece takes to
  come); the later pieces stay sentence-sized, since every flush is a generation of its own.
* **Audio**: ``pcm_16000`` (16 kHz s16le, the graph's format) with ``sync_alignment=true``. Each chunk
  becomes a :class:`SpeechFrame` whose ``text`` and ``alignment`` are the service's character timings,
  so ``protocol_out`` knows what the listener has heard, and an interrupted reply's
  ``agent_response_correction`` says exactly that.
* **End of a reply**: once its text is all flushed and the audio of every character has come back
  (counted from the alignment), or the service says ``isFinal``; then ``close_context``.
* **Barge-in**: the reply's scope is cancelled, its context is closed (``close_context``), and audio
  still arriving for it is dropped.
* **Faults**: every wait for audio has a deadline (``first_audio_timeout_s``, ``stall_timeout_s``);
  a socket that closes, errors or misses a deadline is dropped and the next reply opens a new one. A
  reply that failed before any of its audio was sent downstream is retried once on a new socket
  (nothing was heard, so nothing is repeated); after that, the reply ends where it is and the client
  gets an ``error`` event (``tts_error``). A frame that is not JSON is skipped and logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import Field
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from ah.nodes.cloud import ReleasedOnClose, error_frame, key_check, require_key, tls_context
from ah.nodes.tts_stream import ReplyPieces, TextSplitter, split_replies
from ah.runtime.sdk import (
    Alignment,
    ControlFrame,
    DoctorCheck,
    Input,
    Node,
    Output,
    Params,
    ReplyTextFrame,
    SessionEvent,
    SpeechFrame,
)

SR = 16000
DEFAULT_URL = "wss://api.elevenlabs.io"
#: Markers the sender and the socket's reader put on a context's queue beside the service's messages.
_SENT = "sent"
_ENDED = "ended"
_CLOSED = "closed"


class ElevenLabsTtsParams(Params):
    voice: str = Field("21m00Tcm4TlvDq8ikWAM", description="ElevenLabs voice id.")
    model_id: str = Field("eleven_flash_v2_5", description="TTS model (flash is the low-latency one).")
    base_url: str | None = Field(
        None, description="WebSocket base URL (unset: ELEVENLABS_BASE_URL, else wss://api.elevenlabs.io)."
    )
    api_key_env: str = Field("ELEVENLABS_API_KEY", description="Environment variable that holds the API key.")
    language_code: str | None = Field(None, description="ISO 639-1 language, for models that take it.")
    stability: float = Field(0.5, ge=0, le=1, description="Voice stability.")
    similarity_boost: float = Field(0.8, ge=0, le=1, description="Voice similarity boost.")
    speed: float = Field(1.0, ge=0.7, le=1.2, description="Speaking speed.")
    min_clause_chars: int = Field(
        40,
        ge=0,
        le=10_000,
        description="Send a long sentence's first clauses early once this long (0: never).",
    )
    first_piece_chars: int = Field(
        0,
        ge=0,
        le=300,
        description="A reply's first piece may end at a word boundary once this long, before its "
        "sentence ends: its audio starts while the LLM writes the rest (0: whole sentences). Only the "
        "first piece is short; each flush starts a new generation, so later ones stay sentence-sized.",
    )
    endpoint: Literal["multi-stream-input", "stream-input"] = Field(
        "multi-stream-input",
        description="multi-stream-input: one socket, a context per reply. stream-input: a socket per reply "
        "(with warm, the next one is opened while the current reply speaks).",
    )
    warm: bool = Field(
        True, description="Open the socket at session start and keep it (one context per reply)."
    )
    keepalive_s: float = Field(10.0, gt=0, le=170, description="Keepalive period on the idle socket.")
    inactivity_timeout_s: int = Field(60, ge=5, le=180, description="The service's inactivity timeout.")
    connect_timeout_s: float = Field(5.0, gt=0, le=60, description="Deadline for opening the socket.")
    first_audio_timeout_s: float = Field(
        4.0, gt=0, le=60, description="Deadline from flushed text to its first audio."
    )
    stall_timeout_s: float = Field(4.0, gt=0, le=60, description="Deadline between audio chunks of a reply.")


@dataclass(eq=False)
class _Socket:
    """One open WebSocket: a reader task routes the service's messages to each context's queue."""

    ws: ClientConnection
    contexts: dict[str, asyncio.Queue[Any]] = field(default_factory=dict)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str = ""
    malformed: int = 0
    reader: asyncio.Task[None] | None = None
    next_context: str | None = None
    opened_at: float = field(default_factory=time.perf_counter)

    async def send(self, obj: dict[str, Any]) -> bool:
        try:
            await self.ws.send(json.dumps(obj))
            return True
        except (ConnectionClosed, OSError) as exc:
            self.reason = self.reason or f"the connection closed: {exc}"
            return False

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 2.0)
        if self.reader is not None:
            self.reader.cancel()


class _Failure(Exception):
    """This reply's context failed (the socket closed, an error frame, a deadline)."""


@dataclass(slots=True)
class _State:
    emitted: bool = False  # audio of this reply has gone downstream: a retry would repeat it
    carry: bytes = b""


class ElevenLabsTts(Node[ElevenLabsTtsParams]):
    """Streams reply text to ElevenLabs (multi-stream-input WebSocket) and sends back aligned 16 kHz audio."""

    summary = "ElevenLabs TTS over multi-stream-input WebSocket: warm socket, a context per reply, alignment"
    params_model = ElevenLabsTtsParams
    # Runs ahead: a held (preemptive) reply is synthesised before the turn is confirmed; its audio waits
    # at protocol_out, so it is heard the moment the reply is released, and never if it is dropped.
    text = Input(ReplyTextFrame, doc="reply text: start / delta / stop", runs_ahead=True)
    speech = Output(SpeechFrame, doc="16 kHz PCM16 speech chunks with text and character alignment")
    errors = Output(ControlFrame, doc="error events (a reply the service failed to speak)")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ids = itertools.count(1)
        self._sock: _Socket | None = None
        self._sock_lock = asyncio.Lock()
        self._spare: asyncio.Task[None] | None = None
        self._key = ""

    # -- set-up --------------------------------------------------------------------------------------------------
    def url(self) -> str:
        p = self.params
        base = p.base_url or os.environ.get("ELEVENLABS_BASE_URL") or DEFAULT_URL
        base = base.replace("https://", "wss://").replace("http://", "ws://").rstrip("/")
        query: dict[str, str] = {
            "model_id": p.model_id,
            "output_format": "pcm_16000",
            "inactivity_timeout": str(p.inactivity_timeout_s),
            "sync_alignment": "true",
        }
        if p.language_code:
            query["language_code"] = p.language_code
        return f"{base}/v1/text-to-speech/{p.voice}/{p.endpoint}?{urlencode(query)}"

    async def setup(self) -> None:
        # A missing key fails the session here, at graph start, naming the node and the variable.
        self._key = require_key(
            self.params.api_key_env,
            f"node {self.id!r}",
            f"ElevenLabs text-to-speech ({self.params.model_id})",
        )

    @classmethod
    async def doctor(cls, params: Params) -> list[DoctorCheck]:
        assert isinstance(params, ElevenLabsTtsParams)
        check, key = key_check(params.api_key_env, "ElevenLabs text-to-speech")
        if key is None:
            return [check]
        node = object.__new__(cls)
        node.params = params
        url = node.url()
        t0 = time.perf_counter()
        ms = 0.0
        try:
            async with asyncio.timeout(params.connect_timeout_s + 2):
                async with connect(url, additional_headers={"xi-api-key": key}) as ws:
                    ms = round((time.perf_counter() - t0) * 1000, 1)
                    # The key may be checked on the first message: wait a moment for an error frame.
                    await ws.send(json.dumps({"text": " ", "context_id": "ah-doctor"}))
                    with contextlib.suppress(TimeoutError):
                        while True:
                            msg = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
                            if isinstance(msg, dict) and msg.get("error"):
                                why = msg.get("message") or msg["error"]
                                return [check, DoctorCheck(False, f"ElevenLabs: {url} refused: {why}")]
                    await ws.send(json.dumps({"close_socket": True}))
        except ConnectionClosed as exc:
            return [check, DoctorCheck(False, f"ElevenLabs: {url} closed the socket: {exc}")]
        except InvalidStatus as exc:
            status = exc.response.status_code
            return [check, DoctorCheck(False, f"ElevenLabs: {url} refused the connection (HTTP {status})")]
        except (OSError, TimeoutError, WebSocketException) as exc:
            return [check, DoctorCheck(False, f"ElevenLabs: cannot open {url}: {type(exc).__name__}: {exc}")]
        return [
            check,
            DoctorCheck(True, f"ElevenLabs: {url.split('?')[0]} opened in {ms:g} ms, key accepted"),
        ]

    # -- the socket ----------------------------------------------------------------------------------------------
    async def _connect(self) -> _Socket:
        t0 = time.perf_counter()
        try:
            ws = await asyncio.wait_for(
                connect(
                    url := self.url(),
                    additional_headers={"xi-api-key": self._key},
                    max_size=None,
                    ping_interval=20,
                    create_connection=ReleasedOnClose,  # freed when closed, not at a full collection
                    # wss: the process's TLS context, not a new one (CA loading) per connection
                    ssl=tls_context() if url.startswith("wss") else None,
                ),
                self.params.connect_timeout_s,
            )
        except TimeoutError:
            raise _Failure(f"could not connect within {self.params.connect_timeout_s:g} s") from None
        except InvalidStatus as exc:
            raise _Failure(f"the service refused the connection (HTTP {exc.response.status_code})") from None
        except (OSError, WebSocketException) as exc:
            raise _Failure(f"could not connect: {type(exc).__name__}: {exc}") from None
        sock = _Socket(ws)
        sock.reader = asyncio.get_running_loop().create_task(self._read(sock))
        self.ctx.emit(
            SessionEvent("tts_connected", data={"connect_ms": round((time.perf_counter() - t0) * 1000, 1)})
        )
        return sock

    async def _read(self, sock: _Socket) -> None:
        try:
            async for raw in sock.ws:
                try:
                    msg = json.loads(raw)
                    if not isinstance(msg, dict):
                        raise ValueError("not an object")
                except ValueError:
                    sock.malformed += 1
                    self.ctx.logger.warning("%s: skipped a frame that is not JSON: %.60r", self.id, raw)
                    self.ctx.emit(SessionEvent("tts_malformed_frame", data={"frame": str(raw)[:60]}))
                    continue
                if msg.get("error") and not msg.get("audio"):
                    sock.reason = f"{msg.get('error')}: {msg.get('message', '')}"
                    continue  # the service closes the socket next
                cid = str(msg.get("contextId") or msg.get("context_id") or "")
                q = sock.contexts.get(cid)
                if q is not None:  # else: a closed (interrupted) context's late audio, dropped
                    q.put_nowait(msg)
        except ConnectionClosed as exc:
            sock.reason = (
                sock.reason or f"the connection closed ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
            )
        finally:
            sock.reason = sock.reason or "the service closed the connection"
            sock.closed.set()
            for q in sock.contexts.values():
                q.put_nowait(_CLOSED)

    @property
    def _multi(self) -> bool:
        return self.params.endpoint == "multi-stream-input"

    async def _make_spare(self) -> None:
        """stream-input: open (and initialise) the next reply's socket ahead of time."""
        try:
            sock = await self._connect()
            await self._prepare_context(sock)
        except _Failure as exc:
            self.ctx.logger.warning("%s: could not open the next socket ahead: %s", self.id, exc)
            return
        old, self._sock = self._sock, sock
        if old is not None:
            await old.close()

    async def _socket(self) -> _Socket:
        """The warm socket (opened now if there is none, or it broke); a fresh one when not ``warm``.
        On stream-input the socket is the reply's own, and the next one is opened at once."""
        if not self.params.warm:
            fresh = await self._connect()
            if not self._multi:
                await self._prepare_context(fresh)
            return fresh
        if not self._multi:
            async with self._sock_lock:
                spare = self._spare
                if spare is not None and not spare.done():
                    await spare
                taken, self._sock = self._sock, None
                if taken is None or taken.closed.is_set() or taken.reason:
                    if taken is not None:
                        await taken.close()
                    taken = await self._connect()
                    await self._prepare_context(taken)
            self._spare = asyncio.get_running_loop().create_task(self._make_spare())
            return taken
        async with self._sock_lock:
            sock = self._sock
            if sock is None or sock.closed.is_set() or sock.reason:
                if sock is not None:
                    await sock.close()
                self._sock = None
                self._sock = sock = await self._connect()
                await self._prepare_context(sock)
            return sock

    async def _prepare_context(self, sock: _Socket) -> str:
        """Initialise a context (voice settings, schedule) ahead of the reply that will use it."""
        p = self.params
        cid = f"r{next(self._ids)}" if self._multi else ""
        sock.next_context = cid
        await sock.send(
            {
                "text": " ",
                **({"context_id": cid} if cid else {}),
                "voice_settings": {
                    "stability": p.stability,
                    "similarity_boost": p.similarity_boost,
                    "speed": p.speed,
                    "use_speaker_boost": True,
                },
                "generation_config": {"chunk_length_schedule": [50, 120, 160, 290]},
            }
        )
        return cid

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.params.keepalive_s)
            sock = self._sock
            if sock is None or sock.closed.is_set():
                continue
            if self._multi and sock.next_context:
                # Empty text with a context id: a keepalive on multi-stream-input, never end of input.
                await sock.send({"text": "", "context_id": sock.next_context})
            elif not self._multi:
                # stream-input: a single space (an empty text would end the stream).
                await sock.send({"text": " "})

    # -- running ------------------------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        background = (
            [loop.create_task(self._warm_up()), loop.create_task(self._keepalive())]
            if self.params.warm
            else []
        )
        p = self.params
        try:
            await split_replies(
                self.text,
                self.ctx.scopes.cancelled,
                lambda: TextSplitter(p.min_clause_chars, first_piece_chars=p.first_piece_chars),
                self._reply_worker,
            )
        finally:
            for task in background:
                task.cancel()
            if self._spare is not None:
                self._spare.cancel()
            if self._sock is not None:
                await self._sock.close()

    async def _warm_up(self) -> None:
        if not self._multi:
            await self._make_spare()
            return
        try:
            await self._socket()
        except _Failure as exc:  # the first reply tries again
            self.ctx.logger.warning("%s: could not warm the socket up: %s", self.id, exc)

    async def _reply_worker(self, reply: ReplyPieces, previous: asyncio.Task[None] | None) -> None:
        await self.ctx.scopes.run_in(reply.scope, self._speak_reply(reply, previous))

    async def _speak_reply(self, reply: ReplyPieces, previous: asyncio.Task[None] | None) -> None:
        scope = reply.scope
        first = await reply.pieces.get()
        sent: list[str] = [] if first is None else [first]
        state = _State()
        failure: _Failure | None = None
        if first is not None:
            for attempt in range(2):
                try:
                    await self._run_context(reply, sent, state, previous)
                    failure = None
                    break
                except _Failure as exc:
                    failure = exc
                    self.ctx.logger.warning("%s: reply %d: %s", self.id, scope, exc)
                    if state.emitted or attempt == 1:
                        break  # audio was heard: a retry would say it twice
        if previous is not None:
            await asyncio.wait([previous])
        if failure is not None:
            what = "the rest of the reply is not spoken" if state.emitted else "the reply is not spoken"
            await self.errors.send(
                error_frame(self.id, "tts_error", f"ElevenLabs: {failure} ({what})", scope)
            )
        await self.speech.send(SpeechFrame(b"", SR, last=True, scope=scope))

    async def _run_context(
        self, reply: ReplyPieces, sent: list[str], state: _State, previous: asyncio.Task[None] | None
    ) -> None:
        """Speak the reply on one context: ``sent`` pieces again (a retry), then the rest as it comes."""
        p = self.params
        sock = await self._socket()
        q: asyncio.Queue[Any] = asyncio.Queue()
        cid = sock.next_context
        if not self._multi:
            cid = ""  # the socket is this reply's own, already initialised
        elif cid is None or not p.warm:
            cid = await self._prepare_context(sock)
        context: str = cid
        sock.contexts[context] = q
        if self._multi and p.warm:
            await self._prepare_context(sock)  # the next reply's context, ready before it is needed
        else:
            sock.next_context = None
        if sock.closed.is_set():
            q.put_nowait(_CLOSED)

        async def send_text() -> None:
            for old in list(sent):
                await self._send_piece(sock, context, old, q)
            while (piece := await reply.pieces.get()) is not None:
                sent.append(piece)
                await self._send_piece(sock, context, piece, q)
            q.put_nowait(_ENDED)

        sender = asyncio.get_running_loop().create_task(send_text())
        try:
            if previous is not None:
                await asyncio.wait([previous])  # the previous reply's audio goes first
            expected = received = 0
            ended = aligned = False
            t_flush: float | None = None
            while True:
                if ended and (expected <= received if aligned else False):
                    break
                waiting = expected > received or (ended and not aligned)
                timeout = (
                    (p.stall_timeout_s if state.emitted else p.first_audio_timeout_s) if waiting else None
                )
                try:
                    async with asyncio.timeout(timeout):  # not wait_for: no task per item
                        item = await q.get()
                except TimeoutError:
                    if ended and state.emitted and (not aligned or received >= 0.9 * expected):
                        # The audio has stopped and (nearly) every character came back: the reply is
                        # over (the service's alignment may drop a character or two, or be missing).
                        break
                    raise _Failure(f"no audio within {timeout:g} s") from None
                if isinstance(item, tuple) and item[0] == _SENT:
                    expected += item[1]
                    t_flush = t_flush or time.perf_counter()
                    continue
                if item == _ENDED:
                    ended = True
                    continue
                if item == _CLOSED:
                    raise _Failure(sock.reason or "the connection closed")
                audio = item.get("audio")
                if audio:
                    frame, n_chars = self._frame(item, audio, state, reply.scope)
                    if n_chars is not None:
                        aligned = True
                        received += n_chars
                    if not state.emitted and t_flush is not None:
                        self.ctx.emit(
                            SessionEvent(
                                "tts_first_audio",
                                data={
                                    "scope": reply.scope,
                                    "ms": round((time.perf_counter() - t_flush) * 1000, 1),
                                },
                            )
                        )
                    state.emitted = True
                    if frame.pcm:
                        await self.speech.send(frame)
                if item.get("isFinal") and ended:
                    break
        except _Failure:
            if sock is self._sock:
                self._sock = None  # broken or late: the next reply opens a new socket
                asyncio.get_running_loop().create_task(sock.close())
            raise
        finally:
            sender.cancel()
            sock.contexts.pop(cid, None)
            if not self._multi:
                # stream-input: the socket was this reply's; closing it ends the stream (and, on a
                # barge-in, stops its audio at once).
                await sock.close()
            else:
                if not sock.closed.is_set():
                    # Done: free the context. Cancelled (barge-in): stop its audio now.
                    with contextlib.suppress(Exception):
                        await asyncio.shield(sock.send({"context_id": cid, "close_context": True}))
                if not p.warm:
                    await sock.close()

    async def _send_piece(self, sock: _Socket, cid: str, piece: str, q: asyncio.Queue[Any]) -> None:
        text = piece.strip()
        if not text:
            return
        # Text ends with a space (a word boundary); flush: speak it now, do not wait for more.
        msg: dict[str, Any] = {"text": text + " ", "flush": True}
        if cid:
            msg["context_id"] = cid
        if not await sock.send(msg):
            q.put_nowait(_CLOSED)
            return
        q.put_nowait((_SENT, sum(1 for c in text if not c.isspace())))

    def _frame(
        self, msg: dict[str, Any], audio: str, state: _State, scope: int
    ) -> tuple[SpeechFrame, int | None]:
        pcm = state.carry + base64.b64decode(audio)
        if len(pcm) % 2:
            pcm, state.carry = pcm[:-1], pcm[-1:]
        else:
            state.carry = b""
        al = msg.get("alignment") or msg.get("normalizedAlignment")
        if not isinstance(al, dict) or "chars" not in al:
            return SpeechFrame(pcm, SR, scope=scope), None
        chars = [str(c) for c in al.get("chars") or []]
        starts = al.get("charStartTimesMs") or al.get("charsStartTimesMs") or [0] * len(chars)
        durs = al.get("charsDurationsMs") or al.get("charDurationsMs") or [0] * len(chars)
        alignment = Alignment(chars, [int(x) for x in starts], [int(x) for x in durs])
        n = sum(1 for c in chars if not c.isspace())
        return SpeechFrame(pcm, SR, text="".join(chars), alignment=alignment, scope=scope), n
