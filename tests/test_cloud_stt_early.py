"""``stt.groq``'s early request on the falling VAD score (``early_score``) and on the audio's level
(``early_level_ms``), against the fake Groq.

The VAD frames are scripted (Silero's shape after the last word: 1.0, 0.72, 0.28), so the windows at
which requests start are exact; what each request heard comes from its ``stt_started`` event. With
``early_score: 0.9`` the request goes out a window sooner (at 0.72), and a voiced window after it
(>= ``voiced_score``) still cancels it and asks again, so the final transcript has heard every voiced
window.

With ``early_level_ms`` the request goes out once the audio has been quiet that long after speech,
before the scores fall (they trail the speech); the VAD's trail after it does not cancel it, speech
after it does (a pause inside the sentence costs a request), and so does a window at or above
``early_score`` wholly after its audio. These tests stream audio and VAD frames in the order they
come in the product (each 25 ms chunk, then the windows it completed), with synthetic speech, over
digital silence and over a -50 dBFS noise floor.
"""

from __future__ import annotations

import asyncio
import io
import math
import threading
import wave

import numpy as np
import pytest

from ah.runtime.graph_loader import load_graph
from ah.runtime.sdk import (
    AudioFrame,
    Frame,
    Node,
    Output,
    Params,
    SessionEvent,
    TranscriptFrame,
    UserTurnFrame,
    VadFrame,
)
from ah.runtime.session import Session
from tests.fakes.groq import FakeGroq, GroqConfig
from tests.runtime_nodes import REGISTRY, events_of, frames_of
from tests.server_helpers import ROOT

SR = 16000
WINDOW_S = 0.032


class SttFeed(Node[Params]):
    """Sends the frames the test put in ``attachments["feed"]``: audio to ``audio``, VAD to ``vad``.
    With ``attachments["pace"]``, it waits that long (s) after each frame, so every node has handled
    it before the next (the order the product sees them in). ``GATE`` in the feed waits until the fake
    has answered a transcription (``attachments["answered"]``) and its answer has been handled, then
    emits a ``gate`` event; ``RELEASE`` lets the fake answer (``attachments["release"]``)."""

    audio = Output(AudioFrame)
    vad = Output(VadFrame)

    async def run(self) -> None:
        feed: asyncio.Queue[Frame | str | None] = self.ctx.attachments["feed"]
        pace: float = self.ctx.attachments.get("pace", 0.0)
        while (frame := await feed.get()) is not None:
            if frame == RELEASE:
                self.ctx.attachments["release"].set()
                continue
            if frame == GATE:
                answered: threading.Event = self.ctx.attachments["answered"]
                assert await asyncio.to_thread(answered.wait, 10)
                await asyncio.sleep(0.3)
                self.ctx.emit(SessionEvent("gate"))
                continue
            if isinstance(frame, AudioFrame):
                await self.audio.send(frame)
            else:
                assert isinstance(frame, VadFrame)
                await self.vad.send(frame)
            if pace:
                await asyncio.sleep(pace)


REGISTRY.register("test.stt_feed", SttFeed)
GATE = "gate"
RELEASE = "release"


def graph_text(params: str) -> str:
    return f"""
graph: stt-early
nodes:
  src: {{type: test.stt_feed}}
  stt: {{type: stt.groq, params: {{speculative: true, early_ms: 32, endpoint_silence_ms: 300, {params}}}}}
  rec: {{type: test.recorder}}
edges:
  - src.audio -> stt.audio
  - src.vad -> stt.vad
  - stt.transcripts -> rec.inp
"""


def frames(tail: list[float]) -> list[Frame]:
    """1.4 s of audio; speech confirmed at 0.192 s (from 0.1 s), voiced windows to 0.8 s, then ``tail``'s
    scores, silence after; the VAD's end where the first window below 0.35 began (+30 ms pad),
    confirmed 160 ms later (vad.silero's rules)."""
    out: list[Frame] = [AudioFrame(b"\x01\x00" * int(1.4 * SR))]
    scores = [1.0] * 25 + tail + [0.05] * (43 - 25 - len(tail))
    silent_since: float | None = None
    ended = False
    for k, score in enumerate(scores, start=1):
        t = round(k * WINDOW_S, 3)
        out.append(VadFrame("score", t, score))
        if k == 6:
            out.append(VadFrame("start", 0.1, score, confirmed_at=t))
        if k > 6 and silent_since is None and score < 0.35:
            silent_since = round(t - WINDOW_S, 3)
        if silent_since is not None and not ended and t - silent_since >= 0.16 - 1e-9:
            out.append(VadFrame("end", round(silent_since + 0.03, 3), score, confirmed_at=t))
            ended = True
    return out


def heard(wav: bytes) -> str:
    """The fake's transcript says how much audio it was sent, so the final shows which request it is."""
    with wave.open(io.BytesIO(wav)) as w:
        return f"heard {w.getnframes() / SR:.3f} s"


def run_stt(monkeypatch: pytest.MonkeyPatch, params: str, tail: list[float]) -> Session:
    async def main() -> Session:
        with FakeGroq(GroqConfig(transcribe_fn=heard)) as groq:
            monkeypatch.setenv("GROQ_API_KEY", "gsk_test")
            monkeypatch.setenv("GROQ_BASE_URL", groq.base_url)
            feed: asyncio.Queue[Frame | None] = asyncio.Queue()
            for f in frames(tail):
                feed.put_nowait(f)
            feed.put_nowait(None)
            session = Session(
                load_graph("stt-early.yaml", REGISTRY, text=graph_text(params)), attachments={"feed": feed}
            )
            await asyncio.wait_for(session.run(), 30)
            return session

    return asyncio.run(main())


def started(session: Session) -> list[tuple[float, float]]:
    """Every transcription started: (end of the utterance so far, seconds of audio sent)."""
    return [
        (round(e.data["t_end"], 3), round(e.data["audio_s"], 3)) for e in events_of(session, "stt_started")
    ]


def finals(session: Session) -> list[TranscriptFrame]:
    out = [f for f in frames_of(session, "rec") if isinstance(f, TranscriptFrame) and f.final]
    return out


def test_the_early_request_goes_out_on_the_falling_score(monkeypatch: pytest.MonkeyPatch) -> None:
    tail = [0.72, 0.28]  # windows ending at 0.832 s and 0.864 s
    # Default (early_score = voiced_score 0.5): at the first window below 0.5, with the audio to its end.
    plain = run_stt(monkeypatch, "", tail)
    assert started(plain) == [(0.832, 0.864)]
    # early_score 0.9: one window sooner, at the first window below 0.9, with the audio to its end.
    early = run_stt(monkeypatch, "early_score: 0.9", tail)
    assert started(early) == [(0.832, 0.832)]
    # Either way the early request is the utterance's only one, and its answer the final transcript.
    assert [f.text for f in finals(plain)] == ["heard 0.864 s"]
    assert [f.text for f in finals(early)] == ["heard 0.832 s"]


def test_a_voiced_window_after_the_early_request_cancels_it_and_asks_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 0.85 at 0.832 s (below 0.9: ask, with the audio to 0.832 s), then 0.6: still voiced (>= 0.5), so
    # the first request has not heard all the speech; it is cancelled, and the next one includes that
    # window (below 0.9 too, so it asks at once).
    session = run_stt(monkeypatch, "early_score: 0.9", [0.85, 0.6, 0.2])
    assert started(session) == [(0.832, 0.832), (0.864, 0.864)]
    assert [f.text for f in finals(session)] == ["heard 0.864 s"]


def test_cloud_yaml_has_the_final_transcript_in_before_the_turn_ends() -> None:
    """A turn waits for its final transcript, and stt.groq closes an utterance on the VAD's 32 ms
    windows: at the turn's own silence, the final came at the window after the turn's deadline and a
    held reply that was ready waited for it. graphs/cloud.yaml closes the utterance at least a window
    sooner (the turn still ends after its full silence)."""
    g = load_graph(ROOT / "graphs" / "cloud.yaml", REGISTRY)
    stt, turn = g.nodes["stt"].params, g.nodes["turn"].params
    assert stt.endpoint_silence_ms + 32 <= turn.endpoint_silence_ms
    assert turn.endpoint_silence_ms == 400  # the endpointing silence itself is unchanged


# -- the level cue (early_level_ms) --------------------------------------------------------------------------
CHUNK = 400  # samples: the 25 ms the browser client sends


def audio(spans: list[tuple[float, float, float]], noise_dbfs: float | None = None) -> np.ndarray:
    """1.4 s of float audio: a voiced-like sound at the given dBFS in each (start, end, dBFS) span,
    digital silence elsewhere, or a steady noise floor of ``noise_dbfs`` (RMS) over all of it."""
    x = np.zeros(int(1.4 * SR), dtype=np.float64)
    for a, b, level in spans:
        t = np.arange(round(a * SR), round(b * SR)) / SR
        wave_ = sum(np.sin(2 * math.pi * 140 * k * t) / k for k in range(1, 6))
        wave_ = wave_ / np.sqrt(np.mean(wave_**2)) * 10 ** (level / 20)
        x[round(a * SR) : round(b * SR)] = wave_
    if noise_dbfs is not None:
        x += np.random.default_rng(7).standard_normal(len(x)) * 10 ** (noise_dbfs / 20)
    return x


SPEECH = [(0.1, 0.8, -18.0)]  # speech to 0.8 s, as in ``frames``


def streamed(x: np.ndarray, tail: list[float], gate_before_end: bool = False) -> list[Frame | str]:
    """``x`` in 25 ms chunks, each followed by the VAD frames of the windows it completed (``frames``'s
    scores and decisions: 1.0 to 0.8 s, then ``tail``), as the product sees them."""
    vad = [f for f in frames(tail) if isinstance(f, VadFrame)]
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype("<i2").tobytes()
    out: list[Frame | str] = []
    for i in range(0, len(x), CHUNK):
        out.append(AudioFrame(pcm[2 * i : 2 * (i + CHUNK)]))
        received = (i + CHUNK) / SR
        while vad and (vad[0].t <= received + 1e-9 if vad[0].kind == "score" else True):
            ev = vad.pop(0)
            if ev.kind == "end" and gate_before_end:
                out.append(GATE)
            out.append(ev)
    return out


def level_session(
    monkeypatch: pytest.MonkeyPatch, graph: str, feed_frames: list[Frame | str]
) -> tuple[Session, list[float]]:
    """Runs ``graph`` (a test.stt_feed ``src`` into it) against the fake Groq, paced; returns the
    session and, per transcription the fake answered, the audio it was sent (s). With ``RELEASE`` in
    the feed, the fake answers only once the feed has come that far."""
    answered = threading.Event()
    release = threading.Event()
    if RELEASE not in feed_frames:
        release.set()
    sent: list[float] = []

    def transcribe(wav: bytes) -> str:
        assert release.wait(10)
        text = heard(wav)
        sent.append(float(text.split()[1]))
        answered.set()
        return text

    async def main() -> Session:
        with FakeGroq(GroqConfig(transcribe_fn=transcribe)) as groq:
            monkeypatch.setenv("GROQ_API_KEY", "gsk_test")
            monkeypatch.setenv("GROQ_BASE_URL", groq.base_url)
            feed: asyncio.Queue[Frame | str | None] = asyncio.Queue()
            for f in feed_frames:
                feed.put_nowait(f)
            feed.put_nowait(None)
            session = Session(
                load_graph("stt-level.yaml", REGISTRY, text=graph),
                attachments={"feed": feed, "pace": 0.002, "answered": answered, "release": release},
            )
            await asyncio.wait_for(session.run(), 30)
            return session

    return asyncio.run(main()), sent


LEVEL = "early_score: 0.9, early_level_ms: 50"


def cues(session: Session) -> list[tuple[str, float, float]]:
    """Every transcription started: (its cue, end of the speech it heard, seconds of audio sent)."""
    return [
        (e.data["cue"], round(e.data["t_end"], 3), round(e.data["audio_s"], 3))
        for e in events_of(session, "stt_started")
    ]


@pytest.mark.parametrize("noise", [None, -50.0], ids=["digital_silence", "noise_-50dBFS"])
def test_the_level_cue_asks_before_the_falling_score(
    monkeypatch: pytest.MonkeyPatch, noise: float | None
) -> None:
    # Silero's trail: 1.0 and 0.95 in the windows ending 0.832 and 0.864 s, 0.72 at 0.896 s, 0.28 after.
    tail = [1.0, 0.95, 0.72, 0.28]
    x = audio(SPEECH, noise)
    score, _ = level_session(monkeypatch, graph_text("early_score: 0.9"), streamed(x, tail))
    # The falling score asks at the first window below 0.9 (ending 0.896 s), with the audio to its end.
    assert cues(score) == [("score", 0.896, 0.896)]
    level, _ = level_session(monkeypatch, graph_text(LEVEL), streamed(x, tail))
    # The level asks after 50 ms of quiet (at 0.85 s of audio), 46 ms of audio sooner; the trail's
    # voiced windows after it (1.0 and 0.95 begin inside its audio, 0.72 over quiet audio) keep it.
    assert cues(level) == [("level", 0.8, 0.85)]
    assert [f.text for f in finals(level)] == ["heard 0.850 s"]


def test_a_pause_inside_the_sentence_costs_one_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # 80 ms without sound inside the sentence (0.5-0.58 s); the VAD's scores do not dip.
    x = audio([(0.1, 0.5, -18.0), (0.58, 0.8, -18.0)], -50.0)
    session, _ = level_session(monkeypatch, graph_text(LEVEL), streamed(x, [1.0, 0.95, 0.72, 0.28]))
    # The level asks in the pause; the sound after it cancels that request; the end asks again.
    assert cues(session) == [("level", 0.5, 0.55), ("level", 0.8, 0.85)]
    assert [f.text for f in finals(session)] == ["heard 0.850 s"]


def test_a_strongly_voiced_window_after_the_level_request_cancels_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A sound too faint for the level (-70 dBFS, 52 dB under the speech) that the VAD scores as speech
    # to 0.928 s: the window from 0.864 s (1.0, wholly after the 0.85 s the level request heard)
    # cancels it, and the falling score asks again at its first window below 0.9, with all of it.
    x = audio([*SPEECH, (0.8, 0.93, -70.0)])
    session, _ = level_session(monkeypatch, graph_text(LEVEL), streamed(x, [1.0, 1.0, 1.0, 0.95, 0.72, 0.28]))
    assert cues(session) == [("level", 0.8, 0.85), ("score", 0.96, 0.96)]
    assert [f.text for f in finals(session)] == ["heard 0.960 s"]


def test_the_held_reply_starts_on_the_level_requests_tentative_transcript(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The turn policy starts the held reply at the VAD's end on a tentative transcript that came before
    it, unless a voiced window came after that transcript's end; Silero's trail after the level request
    is such a window, and the transcript answers for it, so the reply starts there and then (before the
    STT's final transcript, which comes only once the STT's silence has run out)."""
    graph = f"""
graph: stt-level-turn
nodes:
  src: {{type: test.stt_feed}}
  stt: {{type: stt.groq, params: {{speculative: true, early_ms: 32, endpoint_silence_ms: 300, {LEVEL}}}}}
  turn: {{type: turn_policy.overlap_aware, params: {{endpoint_silence_ms: 400, preemptive: true}}}}
  rec: {{type: test.recorder}}
edges:
  - src.audio -> stt.audio
  - src.vad -> stt.vad
  - src.vad -> turn.vad
  - stt.transcripts -> turn.transcripts
  - turn.turns -> rec.inp
"""
    feed = streamed(audio(SPEECH, -50.0), [1.0, 0.95, 0.72, 0.28], gate_before_end=True)
    # The fake answers once the trail's windows have come (as Groq's ~200 ms do), and the feed waits for
    # that answer before the VAD's end, and again once the VAD's end has been handled.
    trail_done = next(i for i, f in enumerate(feed) if isinstance(f, VadFrame) and f.t > 0.9)
    feed.insert(trail_done, RELEASE)
    feed.insert(feed.index(GATE) + 2, GATE)
    session, sent = level_session(monkeypatch, graph, feed)
    assert sent == [0.85], "one request, the level's"
    kinds = [
        "gate" if e.kind == "gate" else e.data["event"]
        for e in session.events
        if e.kind == "gate" or (e.kind == "turn" and e.data["event"] in ("preempt", "end_of_turn"))
    ]
    # The tentative transcript is in before the VAD's end (first gate); the held reply starts on it at
    # the VAD's end (before the second gate), long before the STT's final and the end of the turn.
    assert kinds == ["gate", "preempt", "gate", "end_of_turn"]
    turns = [f for f in frames_of(session, "rec") if isinstance(f, UserTurnFrame)]
    assert [(t.text, t.held) for t in turns] == [("heard 0.850 s", True)]
