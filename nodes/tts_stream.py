"""Streaming text-to-speech machinery shared by ``tts.piper`` and ``tts.espeak``.

Not a node type itself: a base class that keeps the contract of every TTS node (``tts.tone`` is the
reference) so that an engine only has to turn one piece of text into 16 kHz audio and, where it
knows them, the times at which the piece's words are spoken.

* **Sentence streaming.** Reply text arrives as LLM deltas. :class:`TextSplitter` cuts it into
  pieces as soon as a sentence is complete (``.``, ``!``, ``?``, a new line), or, in a long sentence,
  at a clause end (``,``, ``;``, ``:``, a dash) once the piece is ``min_clause_chars`` long, so the
  first audio does not wait for the end of a long sentence. ``first_piece_chars`` lets the reply's
  first piece (only that one) end at a word boundary once it is that long (``tts.elevenlabs`` uses it).
* **Pipelining.** Each reply gets a worker that runs in the reply's scope
  (``ctx.scopes.run_in``): one task synthesizes the pieces in order, one at a time, while another
  sends the audio of the previous piece downstream. Sending may wait on backpressure (the output
  paces audio to real time), so synthesis stays at most two pieces ahead of what is sent, and the
  next sentence is ready before the current one has been heard.
* **Cancellation.** Cancelling the scope cancels the worker: no chunk of it is sent after that
  (the check runs between pieces and between chunks); the engine finishes at most the piece it is
  synthesizing, in its worker thread, and that audio is dropped.
* **Chunks.** Audio goes out as 16 kHz PCM16 :class:`SpeechFrame` chunks of exactly ``chunk_ms``:
  each piece's last chunk is padded with silence (at most one chunk, a natural pause between
  sentences) instead of being held back until the next piece exists. A chunk's ``text`` is the
  characters whose start time falls in it and its ``alignment`` their start times (relative to the
  chunk) and durations, so the concatenated ``text`` of a reply's chunks is the reply's text. After
  the reply's ``stop`` comes ``SpeechFrame(b"", last=True)``.
* **Replies in order.** A reply's audio is sent only after the previous reply's has been (its
  synthesis may already run ahead).
* **Blocking work** (model inference, resampling, starting a process) runs on a worker pool of
  :mod:`ah.nodes.inference`, never on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from collections.abc import Callable, Container, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import Field

from ah.runtime.sdk import Alignment, Input, InputPort, Node, Output, Params, ReplyTextFrame, SpeechFrame

SR = 16000

FloatArray = npt.NDArray[np.float32]


# -- params -----------------------------------------------------------------------------------------------
class StreamingTtsParams(Params):
    chunk_ms: int = Field(40, ge=10, le=1000, description="Audio chunk size sent downstream (16 kHz PCM16).")
    sentence_silence_ms: int = Field(
        0,
        ge=0,
        le=5000,
        description="Extra silence after each sentence (the voice already pauses at a period).",
    )
    min_clause_chars: int = Field(
        40,
        ge=0,
        le=10_000,
        description="Speak a long sentence's first clauses early: cut at a comma, semicolon, colon or dash "
        "once the text so far is this long (0: cut only at sentence ends).",
    )
    first_clause_chars: int = Field(
        12,
        ge=0,
        le=10_000,
        description="The same for a reply's first piece, which decides the response latency: a short "
        "opening clause ('Sure, ...') is spoken while the LLM writes the rest (0: use min_clause_chars).",
    )


# -- text: deltas to speakable pieces -------------------------------------------------------------------------
_CLOSERS = "\"'”’)]»"
# A sentence ends at . ! ? … (plus closing quotes or brackets) followed by white space or the end of the
# text received so far; a new line ends one too.
_SENTENCE_END = re.compile(rf"[.!?…]+[{re.escape(_CLOSERS)}]*(?=\s|$)|\n")
_CLAUSE_END = re.compile(rf"(?:[,;:]|\s[—–-])[{re.escape(_CLOSERS)}]*(?=\s)")
# A period after these is not the end of a sentence ("Dr. Smith", "e.g. this").
_ABBREVIATIONS = frozenset("mr mrs ms dr prof st sr jr vs approx dept fig inc ltd mt e.g i.e cf al".split())
_SPACE = re.compile(r"\s+")
MAX_PIECE_CHARS = 300


class TextSplitter:
    """Cuts streamed reply text into pieces to speak: whole sentences, or long sentences' clauses.

    White space after a cut stays with the next piece, so the pieces concatenate to the text.
    """

    def __init__(
        self,
        min_clause_chars: int = 40,
        max_chars: int = MAX_PIECE_CHARS,
        first_clause_chars: int = 0,
        first_piece_chars: int = 0,
    ) -> None:
        self.min_clause_chars = min_clause_chars
        self.first_clause_chars = first_clause_chars or min_clause_chars
        #: The reply's first piece may also end at a word boundary once this long (0: never): its
        #: audio starts while the LLM writes the rest of the sentence. Later pieces never do.
        self.first_piece_chars = first_piece_chars
        self.pieces = 0  # pieces cut so far
        self.max_chars = max_chars
        self.buf = ""

    def feed(self, text: str) -> list[str]:
        """Add a delta; return the pieces it completed."""
        self.buf += text
        out = []
        while (cut := self._cut()) is not None:
            out.append(self.buf[:cut])
            self.buf = self.buf[cut:]
            self.pieces += 1
        return out

    def flush(self) -> str:
        """The rest (the reply has ended)."""
        rest, self.buf = self.buf, ""
        return rest

    def _cut(self) -> int | None:
        b = self.buf
        for m in _SENTENCE_END.finditer(b):
            if not b[: m.start()].strip():
                continue  # nothing to say before it
            if m.group() == "\n":
                return m.end()
            if m.group().startswith(".") and m.group().rstrip(_CLOSERS) == ".":
                before = b[: m.start()].rsplit(None, 1)[-1].lstrip("(\"'“‘").lower()
                if before in _ABBREVIATIONS or (len(before) == 1 and before.isalpha()):
                    continue  # "Dr. Smith", "J. Smith"
                if m.end() == len(b) and before[-1:].isdigit():
                    continue  # "3." may become "3.5": wait for the next delta
            return m.end()
        least = self.first_clause_chars if self.pieces == 0 else self.min_clause_chars
        if least:
            for m in _CLAUSE_END.finditer(b):
                if len(b[: m.end()].strip()) >= least:
                    return m.end()
        if self.pieces == 0 and self.first_piece_chars:
            # A word is whole once white space follows it (the next delta may still extend it).
            for m in _SPACE.finditer(b):
                if len(b[: m.start()].strip()) >= self.first_piece_chars:
                    return m.start()
        if len(b.strip()) >= self.max_chars:
            # No punctuation at all for a long while: cut at the last word boundary.
            space = b.rstrip().rfind(" ")
            if space > 0 and b[:space].strip():
                return space
        return None


# -- timing: words to characters ---------------------------------------------------------------------------------
_WORD = re.compile(r"\S+")


def voiced_span(audio: FloatArray, sr: int = SR, floor_db: float = -40.0) -> tuple[float, float]:
    """Start and end (seconds) of the part of ``audio`` that is not leading or trailing silence.

    10 ms frames whose RMS is within ``floor_db`` of the loudest frame count as voiced.
    """
    hop = max(1, sr // 100)
    n = len(audio) // hop
    if n == 0:
        return 0.0, len(audio) / sr
    rms = np.sqrt(np.mean(np.square(audio[: n * hop].reshape(n, hop), dtype=np.float64), axis=1))
    peak = float(rms.max())
    if peak <= 0.0:
        return 0.0, len(audio) / sr
    voiced = np.nonzero(rms >= peak * 10 ** (floor_db / 20))[0]
    return float(voiced[0] * hop / sr), float(min(len(audio), (voiced[-1] + 1) * hop) / sr)


def proportional_word_spans(text: str, start: float, end: float) -> list[tuple[float, float]]:
    """Spread ``[start, end)`` over the words of ``text`` in proportion to their lengths (a space counts)."""
    words = [m.group() for m in _WORD.finditer(text)]
    if not words:
        return []
    weights = [len(w) + (1 if i < len(words) - 1 else 0) for i, w in enumerate(words)]
    per = (end - start) / max(1, sum(weights))
    spans = []
    t = start
    for w, weight in zip(words, weights, strict=True):
        spans.append((t, t + len(w) * per))
        t += weight * per
    return spans


def char_times(
    text: str, word_spans: list[tuple[float, float]]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Start and duration (seconds) of every character of ``text``, given when each word is spoken.

    A word's characters share its span evenly; the white space between two words spans the gap
    between them; leading white space starts at 0. Starts never decrease.
    """
    starts = np.zeros(len(text))
    durs = np.zeros(len(text))
    prev_end = 0.0
    pos = 0
    for m, (s, e) in zip(_WORD.finditer(text), word_spans, strict=False):
        s = max(s, prev_end)
        e = max(e, s)
        gap = m.start() - pos
        for k in range(gap):
            starts[pos + k] = prev_end + (s - prev_end) * k / gap
            durs[pos + k] = (s - prev_end) / gap
        n = m.end() - m.start()
        for k in range(n):
            starts[m.start() + k] = s + (e - s) * k / n
            durs[m.start() + k] = (e - s) / n
        prev_end = e
        pos = m.end()
    starts[pos:] = prev_end
    return starts, durs


@dataclass(slots=True)
class Synthesis:
    """One piece of text made audio."""

    audio: FloatArray  # 16 kHz mono float32 in [-1, 1]
    #: When each word (``\\S+`` run) of the piece is spoken, in seconds from the audio start; ``None``
    #: when the engine does not know, and timings are then proportional over the voiced part.
    word_spans: list[tuple[float, float]] | None = None


def speech_frames(
    text: str, synth: Synthesis, *, chunk_ms: int, silence_ms: int = 0, scope: int = 0
) -> Iterator[SpeechFrame]:
    """``text``'s audio as SpeechFrames of exactly ``chunk_ms``, each with the characters that start in it."""
    audio = synth.audio
    spans = synth.word_spans
    n_words = sum(1 for _ in _WORD.finditer(text))
    if spans is None or len(spans) != n_words:
        spans = proportional_word_spans(text, *voiced_span(audio))
    starts_s, durs_s = char_times(text, spans)
    chunk = SR * chunk_ms // 1000
    length = len(audio) + SR * silence_ms // 1000
    n_chunks = max(1, math.ceil(length / chunk))
    pcm = np.zeros(n_chunks * chunk, dtype="<i2")
    pcm[: len(audio)] = np.clip(np.round(audio * 32767), -32767, 32767).astype("<i2")
    # Every character must start inside the audio, so that it lands in some chunk.
    start_samples = np.minimum(np.round(starts_s * SR), n_chunks * chunk - 1).astype(np.int64)
    bounds = np.searchsorted(start_samples, np.arange(n_chunks + 1) * chunk, side="left")
    bounds[-1] = len(text)
    for k in range(n_chunks):
        a, b = int(bounds[k]), int(bounds[k + 1])
        chars = list(text[a:b])
        rel_ms = [round((int(x) - k * chunk) * 1000 / SR) for x in start_samples[a:b]]
        dur_ms = [round(float(d) * 1000) for d in durs_s[a:b]]
        yield SpeechFrame(
            pcm[k * chunk : (k + 1) * chunk].tobytes(),
            SR,
            text="".join(chars),
            alignment=Alignment(chars, rel_ms, dur_ms),
            scope=scope,
        )


# -- the node --------------------------------------------------------------------------------------------------
P = TypeVar("P", bound=StreamingTtsParams)


@dataclass(slots=True, eq=False)
class ReplyPieces:
    """One reply's text on its way to a TTS: pieces of speakable size, then ``None``."""

    scope: int
    splitter: TextSplitter
    pieces: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    got_text: bool = False
    ended: bool = False


ReplyWorker = Callable[[ReplyPieces, "asyncio.Task[None] | None"], Coroutine[Any, Any, None]]


async def split_replies(
    text: InputPort[ReplyTextFrame],
    cancelled: Container[int],
    new_splitter: Callable[[], TextSplitter],
    worker: ReplyWorker,
) -> None:
    """Every TTS node's text intake: reply deltas in, one worker per reply fed with its pieces.

    Why shared: the local engines (:class:`StreamingTts`) and ``tts.elevenlabs`` speak differently but
    take text the same way. Each reply (scope) gets a :class:`ReplyPieces` and a worker task, handed the
    previous reply's task so that replies are spoken in order; text of a cancelled scope is dropped; a
    reply that came whole (a ``stop`` without deltas) is spoken from the ``stop``. A worker's failure
    is raised as itself (the session names this node), not as the task group around it.
    """
    replies: dict[int, ReplyPieces] = {}
    previous: asyncio.Task[None] | None = None
    try:
        async with asyncio.TaskGroup() as tg:
            async for frame in text:
                scope = frame.scope
                if scope in cancelled:
                    continue
                reply = replies.get(scope)
                if reply is None or reply.ended:
                    reply = ReplyPieces(scope, new_splitter())
                    replies[scope] = reply
                    previous = tg.create_task(worker(reply, previous))
                    previous.add_done_callback(functools.partial(_forget, replies, reply))
                if frame.kind == "delta" and frame.text:
                    reply.got_text = True
                    for piece in reply.splitter.feed(frame.text):
                        reply.pieces.put_nowait(piece)
                elif frame.kind == "stop":
                    rest = reply.splitter.flush() if reply.got_text else frame.text
                    if rest.strip():
                        reply.pieces.put_nowait(rest)
                    reply.pieces.put_nowait(None)
                    reply.ended = True
    except BaseExceptionGroup as group:
        errors = [e for e in group.exceptions if not isinstance(e, asyncio.CancelledError)]
        if len(errors) == 1 and isinstance(errors[0], Exception):
            raise errors[0] from None
        raise


def _forget(replies: dict[int, ReplyPieces], reply: ReplyPieces, _task: object) -> None:
    """A reply's worker has ended (spoken, cancelled or failed): drop it unless a newer one took its scope."""
    if replies.get(reply.scope) is reply:
        del replies[reply.scope]


class StreamingTts(Node[P]):
    """Base of the streaming TTS nodes: subclasses implement :meth:`synthesize` (and ``setup``)."""

    text = Input(ReplyTextFrame, doc="reply text: start / delta / stop")
    speech = Output(SpeechFrame, doc="16 kHz PCM16 speech chunks with text and character alignment")

    async def synthesize(self, text: str) -> Synthesis:
        """Speak one piece of text, never blocking the event loop (``inference.run_blocking``)."""
        raise NotImplementedError

    async def run(self) -> None:
        p = self.params
        await split_replies(
            self.text,
            self.ctx.scopes.cancelled,
            lambda: TextSplitter(p.min_clause_chars, first_clause_chars=p.first_clause_chars),
            self._reply_worker,
        )

    async def _reply_worker(self, reply: ReplyPieces, previous: asyncio.Task[None] | None) -> None:
        await self.ctx.scopes.run_in(reply.scope, self._speak_reply(reply, previous))

    async def _speak_reply(self, reply: ReplyPieces, previous: asyncio.Task[None] | None) -> None:
        # Synthesized pieces wait here for the sender: one queued, one in synthesis, one being sent.
        ready: asyncio.Queue[tuple[str, Synthesis] | None] = asyncio.Queue(maxsize=1)

        async def synthesize_pieces() -> None:
            while (piece := await reply.pieces.get()) is not None:
                if piece.strip():
                    # The engine speaks the stripped text; its words are the piece's words, and the
                    # piece's white space still goes out in the chunks' text.
                    await ready.put((piece, await self.synthesize(piece.strip())))
            await ready.put(None)

        async def send_pieces() -> None:
            if previous is not None:
                await asyncio.wait([previous])  # the previous reply's audio goes first
            scope = reply.scope
            cancelled = self.ctx.scopes.cancelled
            p = self.params
            while (item := await ready.get()) is not None:
                piece, synth = item
                for frame in speech_frames(
                    piece, synth, chunk_ms=p.chunk_ms, silence_ms=p.sentence_silence_ms, scope=scope
                ):
                    if scope in cancelled:
                        return
                    await self.speech.send(frame)
            await self.speech.send(SpeechFrame(b"", SR, last=True, scope=scope))

        async with asyncio.TaskGroup() as tg:
            tg.create_task(synthesize_pieces())
            tg.create_task(send_pieces())
