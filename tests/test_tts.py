"""``tts.piper`` and ``tts.espeak`` with the real voices, driven through small graphs.

A test source sends a reply's text as an LLM would (``start``, word deltas, ``stop``) in a scope the
test opens; a recorder collects the speech. The audio is checked by ear, so to speak: faster-whisper
(the STT model of the default graph) transcribes it and the transcript must match the reply.
Timings are printed, never asserted (ARCHITECTURE.md §5).
"""

from __future__ import annotations

import asyncio
import difflib
import itertools
import re
import shutil
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable
from functools import cache
from typing import Any, TypeVar

import numpy as np
import pytest

from ah.nodes import inference, tts_piper
from ah.nodes.model_store import ModelMissing, require
from ah.nodes.tts_stream import TextSplitter
from ah.runtime.graph_loader import GraphValidationError, load_graph
from ah.runtime.sdk import Node, Output, Params, ReplyTextFrame, SessionEvent, SpeechFrame
from ah.runtime.session import Session, SessionResult
from tests.runtime_nodes import REGISTRY

T = TypeVar("T")
SR = 16000

REPLY = (
    "Good morning and welcome to the weather report. Today will be sunny with a light breeze from the west. "
    "In the afternoon, clouds will move in from the coast. Take an umbrella if you go out tonight."
)


class ReplyFeed(Node[Params]):
    """Sends the reply text frames the test puts in ``attachments["feed"]``; ``None`` ends it."""

    out = Output(ReplyTextFrame)

    async def run(self) -> None:
        self.ctx.attachments["running"].set()  # every node is set up: the session is running
        feed: asyncio.Queue[ReplyTextFrame | None] = self.ctx.attachments["feed"]
        while (frame := await feed.get()) is not None:
            await self.out.send(frame)


REGISTRY.register("test.reply_feed", ReplyFeed)


def graph_text(tts: str, **params: Any) -> str:
    p = ", ".join(f"{k}: {v}" for k, v in params.items())
    return f"""
graph: tts-test
nodes:
  src: {{type: test.reply_feed}}
  tts: {{type: {tts}, params: {{{p}}}}}
  rec: {{type: test.recorder}}
edges:
  - src.out -> tts.text
  - tts.speech -> rec.inp
"""


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(guarded())


class Harness:
    """One session of the graph: feed replies in, speech frames out (per scope, with arrival times)."""

    def __init__(self, tts: str, **params: Any) -> None:
        self.feed: asyncio.Queue[ReplyTextFrame | None] = asyncio.Queue()
        self.running = asyncio.Event()
        self.session = Session(
            load_graph("tts-test.yaml", REGISTRY, text=graph_text(tts, **params)),
            attachments={"feed": self.feed, "running": self.running},
            on_event=self._on_event,
        )
        self.frames: dict[int, list[SpeechFrame]] = defaultdict(list)
        self.first_at: dict[int, float] = {}
        self.first: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.done: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.late: list[SessionEvent] = []
        self.task: asyncio.Task[SessionResult] | None = None

    def _on_event(self, event: SessionEvent) -> None:
        if event.kind == "late_frame":
            self.late.append(event)
        if event.kind != "frame":
            return
        frame = event.data["frame"]
        assert isinstance(frame, SpeechFrame)
        self.frames[frame.scope].append(frame)
        self.first_at.setdefault(frame.scope, time.perf_counter())
        self.first[frame.scope].set()
        if frame.last:
            self.done[frame.scope].set()

    @property
    def tts(self) -> Any:
        return self.session.nodes["tts"]

    async def start(self) -> None:
        """Start the session; return once every node is set up (the voice loaded) and running."""
        self.task = asyncio.create_task(self.session.run())
        running = asyncio.create_task(self.running.wait())
        await asyncio.wait([self.task, running], return_when=asyncio.FIRST_COMPLETED)
        running.cancel()

    def open(self) -> int:
        scope = self.session.scopes.open("reply")
        self.feed.put_nowait(ReplyTextFrame("", kind="start", scope=scope))
        return scope

    def deltas(self, scope: int, text: str) -> None:
        for token in re.findall(r"\s*\S+", text):
            self.feed.put_nowait(ReplyTextFrame(token, scope=scope))

    def stop(self, scope: int, text: str) -> None:
        self.feed.put_nowait(ReplyTextFrame(text, kind="stop", scope=scope))

    async def say(self, text: str) -> int:
        scope = self.open()
        self.deltas(scope, text)
        self.stop(scope, text)
        await self.done[scope].wait()
        return scope

    async def close(self) -> SessionResult:
        assert self.task is not None
        self.feed.put_nowait(None)
        result = await self.task
        assert result.ok, result.failure
        return result


# -- checks --------------------------------------------------------------------------------------------------
def check_contract(frames: list[SpeechFrame], text: str, chunk_ms: int) -> np.ndarray:
    """The TTS contract; returns the reply's audio as float32."""
    assert frames and frames[-1].last and frames[-1].pcm == b""
    assert not any(f.last for f in frames[:-1])
    chunk_bytes = SR * chunk_ms // 1000 * 2
    times: list[int] = []
    offset_ms = 0.0
    for f in frames[:-1]:
        assert f.sample_rate == SR and len(f.pcm) == chunk_bytes
        assert f.alignment is not None
        a = f.alignment
        assert "".join(a.chars) == f.text
        assert len(a.char_start_times_ms) == len(a.chars) == len(a.char_durations_ms)
        assert all(0 <= t <= chunk_ms for t in a.char_start_times_ms), a
        assert all(d >= 0 for d in a.char_durations_ms)
        times += [round(offset_ms) + t for t in a.char_start_times_ms]
        offset_ms += chunk_ms
    spoken = "".join(f.text for f in frames)
    assert spoken.split() == text.split()
    assert all(b >= a for a, b in itertools.pairwise(times)), "alignment goes back in time"
    return np.frombuffer(b"".join(f.pcm for f in frames), dtype="<i2").astype(np.float32) / 32768


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


@cache
def whisper() -> Any:
    from faster_whisper import WhisperModel

    return WhisperModel(str(require("whisper-tiny.en")), device="cpu", compute_type="int8", cpu_threads=2)


def transcribe(audio: np.ndarray) -> str:
    segments, _ = whisper().transcribe(audio, language="en", beam_size=1, condition_on_previous_text=False)
    return " ".join(s.text.strip() for s in segments)


def have_models(*names: str) -> bool:
    try:
        for n in names:
            require(n)
    except ModelMissing:
        return False
    return True


needs_piper = pytest.mark.skipif(
    not have_models("piper-joe", "whisper-tiny.en"),
    reason="models missing: run `ah models pull piper-joe whisper-tiny.en` (or `make models`)",
)
needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None, reason="espeak-ng missing: apt-get install espeak-ng"
)


# -- text splitting ------------------------------------------------------------------------------------------------
def test_splitter_cuts_sentences_and_long_clauses_as_text_streams() -> None:
    s = TextSplitter(min_clause_chars=30)
    pieces: list[str] = []
    text = (
        'Hi. Dr. Smith paid 3.5 dollars, e.g. for tea. Then, after a long and winding walk, she said: "Done!" '
        "And so on"
    )
    for token in re.findall(r"\s*\S+", text):
        pieces += s.feed(token)
    pieces.append(s.flush())
    assert pieces == [
        "Hi.",
        " Dr. Smith paid 3.5 dollars, e.g. for tea.",
        " Then, after a long and winding walk,",
        ' she said: "Done!"',
        " And so on",
    ]
    assert "".join(pieces) == text
    # a number's period is not an end until the next delta says so
    s = TextSplitter()
    assert s.feed("It costs 3.") == []
    assert s.feed("5 euros.") == ["It costs 3.5 euros."]


def test_splitter_speaks_a_short_opening_clause_first() -> None:
    """The first piece decides the response latency: its clause may be cut sooner than later ones."""
    text = "Sure, I can help with that, and then, with anything else you need today."
    tokens = re.findall(r"\s*\S+", text)
    eager, plain = TextSplitter(30, first_clause_chars=5), TextSplitter(30)
    got_eager = [p for p in [*(q for t in tokens for q in eager.feed(t)), eager.flush()] if p]
    got_plain = [p for p in [*(q for t in tokens for q in plain.feed(t)), plain.flush()] if p]
    assert got_eager == ["Sure,", " I can help with that, and then,", " with anything else you need today."]
    assert got_plain == ["Sure, I can help with that, and then,", " with anything else you need today."]


def test_splitter_may_cut_only_the_first_piece_at_a_word_boundary() -> None:
    """tts.elevenlabs' first_piece_chars: the reply's first words go out before their sentence ends (a
    word is whole once white space follows it); every later piece is a sentence again."""
    text = "The first train leaves at six forty-five tomorrow morning. The second one leaves at seven."
    for tokens in (re.findall(r"\s*\S+", text), re.findall(r"\S+\s*", text)):  # either token style
        eager, plain = TextSplitter(40, first_piece_chars=24), TextSplitter(40)
        got_eager = [p for p in [*(q for t in tokens for q in eager.feed(t)), eager.flush()] if p]
        got_plain = [p for p in [*(q for t in tokens for q in plain.feed(t)), plain.flush()] if p]
        assert [p.strip() for p in got_eager] == [
            "The first train leaves at",
            "six forty-five tomorrow morning.",
            "The second one leaves at seven.",
        ]
        assert "".join(got_eager) == text
        assert [p.strip() for p in got_plain] == [
            "The first train leaves at six forty-five tomorrow morning.",
            "The second one leaves at seven.",
        ]
    # A word still being written is not cut: "at" may become "atmosphere".
    s = TextSplitter(40, first_piece_chars=24)
    assert s.feed("The first train leaves at") == []
    assert s.feed("mospheric ") == ["The first train leaves atmospheric"]
    # A sentence shorter than that is the first piece as it was.
    s = TextSplitter(40, first_piece_chars=24)
    assert s.feed("Done. I booked a table for two at seven tonight. ") == [
        "Done.",
        " I booked a table for two at seven tonight.",
    ]


# -- Piper ----------------------------------------------------------------------------------------------------------
@needs_piper
def test_piper_streams_by_sentence_and_its_audio_says_the_reply() -> None:
    chunk_ms = 60
    sentences = re.findall(r"\S.*?[.!?](?=\s|$)", REPLY)

    async def scenario() -> tuple[list[SpeechFrame], float]:
        h = Harness("tts.piper", chunk_ms=chunk_ms)
        await h.start()
        scope = h.open()
        t0 = time.perf_counter()
        h.deltas(scope, sentences[0] + " " + sentences[1][:12])
        # The first sentence is complete and the LLM is still writing: its audio must come now.
        await asyncio.wait_for(h.first[scope].wait(), 30)
        first_audio = h.first_at[scope] - t0
        h.deltas(scope, sentences[1][12:] + " " + " ".join(sentences[2:]))
        h.stop(scope, REPLY)
        await h.done[scope].wait()
        await h.close()
        return h.frames[scope], first_audio

    frames, first_audio = run(scenario())
    audio = check_contract(frames, REPLY, chunk_ms)
    heard = transcribe(audio)
    error = wer(REPLY, heard)
    print(
        f"\npiper: first audio {first_audio * 1000:.0f} ms; {len(audio) / SR:.1f} s of audio; WER {error:.0%}"
    )
    print(f"heard: {heard}")
    assert error <= 0.2, heard


@needs_piper
def test_piper_word_timings_match_where_whisper_hears_the_words() -> None:
    text = "Please send the package to my office before noon."

    async def scenario() -> list[SpeechFrame]:
        # Without Piper's random variation the audio, and so Whisper's hearing of it, is reproducible.
        h = Harness("tts.piper", chunk_ms=40, noise_scale=0, noise_w=0)
        await h.start()
        scope = await h.say(text)
        await h.close()
        return h.frames[scope]

    frames = run(scenario())
    audio = check_contract(frames, text, 40)
    # Where each word starts by the alignment, and by Whisper's word timestamps.
    starts: list[float] = []
    for k, f in enumerate(frames[:-1]):
        assert f.alignment is not None
        starts += [k * 0.04 + t / 1000 for t in f.alignment.char_start_times_ms]
    spoken = "".join(f.text for f in frames)
    ours = [starts[m.start()] for m in re.finditer(r"\S+", spoken)]
    segments, _ = whisper().transcribe(audio, language="en", beam_size=1, word_timestamps=True)
    heard = [w for s in segments for w in (s.words or [])]
    ref, hyp = words(text), [" ".join(words(w.word)) for w in heard]
    matched = [
        (ours[block.a + k], heard[block.b + k].start)
        for block in difflib.SequenceMatcher(a=ref, b=hyp).get_matching_blocks()
        for k in range(block.size)
    ]
    assert len(matched) >= 0.8 * len(ref), hyp
    diffs = [abs(a - b) for a, b in matched]
    print(
        f"\nword starts vs whisper: median {statistics.median(diffs) * 1000:.0f} ms, max {max(diffs) * 1000:.0f} ms"
    )
    assert statistics.median(diffs) < 0.2


@needs_piper
def test_piper_cancel_stops_the_reply_and_the_next_one_speaks() -> None:
    async def scenario() -> None:
        h = Harness("tts.piper")
        await h.start()
        calls: list[str] = []
        synthesize = h.tts.synthesize

        async def counting(text: str) -> Any:
            calls.append(text)
            return await synthesize(text)

        h.tts.synthesize = counting
        scope = h.open()
        h.deltas(scope, REPLY)
        h.stop(scope, REPLY)
        await h.first[scope].wait()
        h.session.scopes.cancel(scope)  # barge-in: the first chunk has just been delivered
        delivered = len(h.frames[scope])
        second = await asyncio.wait_for(h.say("Sorry, go ahead."), 30)
        await h.close()
        assert len(h.frames[scope]) == delivered and not h.late  # nothing of it after the cancel
        assert not any(f.last for f in h.frames[scope])
        # Only the sentence being synthesized (and the one ready before it) were ever started.
        assert len([c for c in calls if c in REPLY]) <= 2, calls
        check_contract(h.frames[second], "Sorry, go ahead.", 40)

    run(scenario())


@needs_piper
def test_piper_sessions_share_one_loaded_voice() -> None:
    async def scenario() -> None:
        await tts_piper.PiperTts.preload(tts_piper.PiperTtsParams())  # what a server does at start
        a, b = Harness("tts.piper"), Harness("tts.piper", length_scale=1.2)
        await asyncio.gather(a.start(), b.start())
        assert a.tts.voice is b.tts.voice is await tts_piper.shared_voice("joe")
        sa, sb = await asyncio.gather(a.say("One."), b.say("Two."))
        await asyncio.gather(a.close(), b.close())
        # the slower session speaks the same voice, more slowly
        assert len(b.frames[sb]) > 0 and len(a.frames[sa]) > 0

    run(scenario())
    assert len([key for key in inference.loaded() if key[0] == "piper"]) == 1
    model_loads = [s for m, s in tts_piper.loads if m.name == "en_US-joe-medium.onnx"]
    assert len(model_loads) == 1
    print(f"\npiper voice load (once per process): {model_loads[0]:.2f} s")


@needs_piper
def test_event_loop_stays_responsive_while_piper_synthesizes() -> None:
    """A probe on the loop measures how late its 2 ms sleeps wake, idle and while a reply is synthesized.

    Printed, not asserted (ARCHITECTURE.md §5): other processes share the 2 cores, so the idle figure
    is the baseline to read the other against.
    """

    async def probe(lags: list[float], stop: asyncio.Event) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.002)
            lags.append(time.perf_counter() - t - 0.002)

    async def scenario() -> tuple[list[float], list[float], float, float]:
        h = Harness("tts.piper")
        await h.start()
        idle: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(probe(idle, stop))
        await asyncio.sleep(0.5)
        stop.set()
        await task
        busy: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(probe(busy, stop))
        t0 = time.perf_counter()
        scope = await h.say(REPLY)
        elapsed = time.perf_counter() - t0
        stop.set()
        await task
        await h.close()
        audio_s = sum(len(f.pcm) for f in h.frames[scope]) / 2 / SR
        return idle, busy, elapsed, audio_s

    idle, busy, elapsed, audio_s = run(scenario())
    assert len(busy) > 10

    def ms(lags: list[float]) -> str:
        p50, p99 = np.percentile(lags, [50, 99]) * 1000
        return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {max(lags) * 1000:.2f} ms ({len(lags)} samples)"

    print(
        f"\nsynthesized {audio_s:.1f} s of speech in {elapsed:.2f} s (real-time factor {elapsed / audio_s:.3f})"
        f"\nevent-loop lag while synthesizing: {ms(busy)}\nevent-loop lag idle (baseline): {ms(idle)}"
    )


def test_piper_missing_model_fails_at_start_with_the_command(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AH_MODELS_DIR", str(tmp_path))

    async def scenario() -> SessionResult:
        h = Harness("tts.piper")
        h.feed.put_nowait(None)
        return await h.session.run()

    result = run(scenario())
    assert not result.ok and result.failure is not None
    assert result.failure.node_id == "tts"
    assert "ah models pull piper-joe" in str(result.failure)


def test_piper_unknown_voice_is_a_graph_error_listing_the_voices() -> None:
    with pytest.raises(GraphValidationError, match="known voices: joe"):
        load_graph("tts-test.yaml", REGISTRY, text=graph_text("tts.piper", voice="amy"))


# -- espeak-ng ---------------------------------------------------------------------------------------------------------
@needs_espeak
def test_espeak_speaks_intelligibly_with_the_same_contract() -> None:
    text = "Hello there, how are you doing today? Please send the package to my office before noon."

    async def scenario() -> list[SpeechFrame]:
        h = Harness("tts.espeak", chunk_ms=80)
        await h.start()
        scope = await h.say(text)
        await h.close()
        return h.frames[scope]

    audio = check_contract(run(scenario()), text, 80)
    heard = transcribe(audio)
    print(f"\nespeak: heard {heard!r}, WER {wer(text, heard):.0%}")
    assert wer(text, heard) <= 0.2, heard


def test_espeak_missing_fails_at_start_with_the_install_command(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    async def scenario() -> SessionResult:
        h = Harness("tts.espeak")
        h.feed.put_nowait(None)
        return await h.session.run()

    result = run(scenario())
    assert result.failure is not None and result.failure.node_id == "tts"
    assert "apt-get install espeak-ng" in str(result.failure)
