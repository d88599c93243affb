"""``stt.whisper_local`` on real audio, driven through graphs: accuracy, confidence, speculation, failures.

The fixtures are Piper-made user speech in a voice other than the agent's (ARCHITECTURE.md §8). The
audio is played as fast as the graph takes it, except in the event-loop lag test, which plays in real
time: utterance boundaries are decided on the VAD's audio time line, so results do not depend on pace.
No test asserts a wall-clock figure; the lag test prints its measurement (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from pathlib import Path
from typing import Any

import jiwer
import pytest

from ah.nodes.inference import loaded
from ah.nodes.model_store import MANIFEST, ModelMissing, is_present, models_dir
from ah.runtime.frames import TranscriptFrame, VadFrame
from ah.runtime.graph_loader import GraphValidationError
from ah.runtime.node import SessionEvent
from ah.runtime.session import Session
from tests.audio_nodes import fixture_meta, session, utterances
from tests.runtime_nodes import events_of, frames_of

pytestmark = pytest.mark.skipif(
    not (is_present(MANIFEST["whisper-tiny.en"]) and is_present(MANIFEST["silero-vad"])),
    reason="models not pulled (ah models pull whisper-tiny.en silero-vad)",
)

MODELS_DIR = models_dir()  # before a test points AH_MODELS_DIR elsewhere

GRAPH = """
graph: stt_test
nodes:
  src:  {type: test.wav_source, params: {files: [%(files)s], gap_s: %(gap)s, realtime: %(realtime)s}}
  vad:  {type: %(vad)s}
  stt:  {type: stt.whisper_local, params: {%(params)s}}
  text: {type: test.recorder}
  ev:   {type: test.recorder}
edges:
  - src.audio -> vad.audio
  - vad.audio_out -> stt.audio
  - vad.events -> stt.vad
  - vad.events -> ev.inp
  - stt.transcripts -> text.inp
"""


def stt_session(
    files: str,
    params: str = "",
    *,
    gap: float = 0.3,
    realtime: bool = False,
    vad: str = "vad.silero",
    **kw: Any,
) -> Session:
    text = GRAPH % {
        "files": files,
        "params": params,
        "gap": gap,
        "realtime": str(realtime).lower(),
        "vad": vad,
    }
    return session(text, **kw)


def run(s: Session) -> None:
    result = asyncio.run(asyncio.wait_for(s.run(), 90))
    assert result.ok, result.failure


def transcripts(s: Session) -> list[TranscriptFrame]:
    out = []
    for f in frames_of(s, "text"):
        assert isinstance(f, TranscriptFrame)
        out.append(f)
    return out


# Whisper writes numbers as digits and sometimes ordinals as "1st": compare words, not spellings.
NUMBERS = {"2": "two", "7": "seven", "1st": "first"}
NORMALIZE = jiwer.Compose(
    [
        jiwer.ToLowerCase(),
        jiwer.RemovePunctuation(),
        jiwer.SubstituteWords(NUMBERS),
        # "14C (25F)" and Whisper's "14C25F" are the same words: split where letters meet digits
        # (after the substitutions, so "1st" has become "first").
        jiwer.SubstituteRegexes({r"(?<=\d)(?=[a-z])": " ", r"(?<=[a-z])(?=\d)": " "}),
        jiwer.RemoveMultipleSpaces(),
        jiwer.Strip(),
        jiwer.ReduceToListOfListOfWords(),
    ]
)


def wer(refs: list[str], hyps: list[str]) -> float:
    return float(jiwer.wer(refs, hyps, reference_transform=NORMALIZE, hypothesis_transform=NORMALIZE))


def test_word_error_rate_and_confidence_over_the_fixtures_and_speculation_changes_nothing() -> None:
    names = utterances()
    meta = fixture_meta()
    refs = [meta[n]["text"] for n in names]
    files = ", ".join(names)
    spec, plain = stt_session(files), stt_session(files, "speculative: false")
    run(spec)
    run(plain)
    got = transcripts(spec)
    assert len(got) == len(names), [t.text for t in got]
    hyps = [t.text for t in got]
    error = wer(refs, hyps)
    confidences = [t.confidence or 0.0 for t in got]
    runs = [e.data["infer_s"] for e in events_of(spec, "stt_run")]
    print(
        f"\nstt.whisper_local tiny.en over {len(names)} fixtures: WER {error:.1%}, "
        f"confidence mean {statistics.mean(confidences):.3f} min {min(confidences):.3f}, "
        f"{statistics.mean(runs):.3f} s per utterance (mean of {len(runs)})"
    )
    for ref, t in zip(refs, got, strict=True):
        if t.text != ref:
            print(f"  {ref!r} -> {t.text!r}")
    assert error <= 0.10
    assert statistics.mean(confidences) > 0.8 and min(confidences) > 0.7
    assert all(t.final for t in got)
    # Audio-time bounds: each utterance in the stream (files 0.3 s apart) is where it was placed.
    offset = 0.0
    for name, t in zip(names, got, strict=True):
        ((a, b),) = meta[name]["speech"]
        assert offset + a - 0.1 <= t.t_start <= offset + a + 0.05
        assert offset + b - 0.05 <= t.t_end <= offset + b + 0.25
        offset += meta[name]["duration_s"] + 0.3
    # Speculation starts each run earlier; it never changes what is heard or said.
    assert [t.text for t in transcripts(plain)] == hyps
    assert [(t.t_start, t.t_end) for t in transcripts(plain)] == [(t.t_start, t.t_end) for t in got]
    assert len(events_of(spec, "stt_started")) == len(events_of(plain, "stt_started")) == len(names)
    # One model per process, shared by the sessions.
    assert spec.nodes["stt"]._model is plain.nodes["stt"]._model  # type: ignore[attr-defined]
    assert ("faster-whisper", str(MODELS_DIR / "whisper-tiny.en"), ("threads", 1)) in loaded()


def test_the_fit_window_hears_what_the_30_second_window_hears() -> None:
    """``window: fit`` encodes only the utterance (the default, ~5x less work); it must not cost accuracy."""
    names = utterances()
    refs = [fixture_meta()[n]["text"] for n in names]
    files = ", ".join(names)
    fit, full = stt_session(files), stt_session(files, 'window: "30s", speculative: false')
    run(fit)
    run(full)
    fit_texts, full_texts = [t.text for t in transcripts(fit)], [t.text for t in transcripts(full)]
    assert len(fit_texts) == len(full_texts) == len(names)
    assert wer(refs, fit_texts) <= 0.10 and wer(refs, full_texts) <= 0.10
    assert wer(full_texts, fit_texts) <= 0.05, list(zip(full_texts, fit_texts, strict=True))
    work = {
        name: statistics.mean(e.data["infer_s"] for e in events_of(s, "stt_run"))
        for name, s in (("fit", fit), ("30s", full))
    }
    print(f"\nWhisper compute per utterance: fit {work['fit']:.3f} s, 30s {work['30s']:.3f} s")
    assert all(0.7 < (t.confidence or 0.0) for t in transcripts(fit))


def test_speech_resuming_before_the_endpoint_is_merged_and_the_stale_run_discarded() -> None:
    # The fixture pauses 700 ms mid-sentence. With endpoint_silence_ms above that, it is one utterance.
    spec = stt_session("pause_700ms.wav", "endpoint_silence_ms: 1000")
    plain = stt_session("pause_700ms.wav", "endpoint_silence_ms: 1000, speculative: false")
    split = stt_session("pause_700ms.wav", "endpoint_silence_ms: 300")
    for s in (spec, plain, split):
        run(s)
    want = fixture_meta()["pause_700ms.wav"]["text"]
    (merged,) = transcripts(spec)
    assert wer([want], [merged.text]) == 0.0, merged.text
    assert [t.text for t in transcripts(plain)] == [merged.text]
    # Speculation transcribed the first part at the pause, then threw that away when speech resumed.
    assert [e.data["t_end"] < 2.0 for e in events_of(spec, "stt_started")] == [True, False]
    assert len(events_of(plain, "stt_started")) == 1
    first, second = transcripts(split)
    assert wer([want], [f"{first.text} {second.text}"]) == 0.0
    assert first.t_end < second.t_start


def test_noise_that_trips_a_vad_gives_no_transcript() -> None:
    s = stt_session("cough.wav", vad="vad.energy")  # the energy VAD takes the cough for speech
    run(s)
    assert [f.kind for f in frames_of(s, "ev") if isinstance(f, VadFrame) and f.kind != "score"] == [
        "start",
        "end",
    ]
    assert [e.data["text"] for e in events_of(s, "stt_run")] == [""]
    assert transcripts(s) == []


def test_a_missing_model_fails_at_setup_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AH_MODELS_DIR", str(tmp_path))
    s = session(
        """
graph: missing
nodes:
  src: {type: test.wav_source, params: {files: [user_01.wav]}}
  stt: {type: stt.whisper_local}
  vad: {type: vad.energy}
edges:
  - src.audio -> vad.audio
  - vad.audio_out -> stt.audio
  - vad.events -> stt.vad
"""
    )
    result = asyncio.run(s.run())
    assert not result.ok and result.failure is not None and result.failure.node_id == "stt"
    assert isinstance(result.failure.error, ModelMissing)
    assert "ah models pull whisper-tiny.en" in str(result.failure.error)


def test_model_names_and_languages_are_checked_before_anything_runs() -> None:
    with pytest.raises(
        GraphValidationError, match=re.escape("unknown Whisper model 'large-v9'; known: tiny.en")
    ):
        stt_session("user_01.wav", "model: large-v9")
    s = stt_session("user_01.wav", "language: fr")
    result = asyncio.run(s.run())
    assert result.failure is not None and "English-only" in str(result.failure.error)


def test_event_loop_lag_while_transcribing_in_real_time() -> None:
    """Plays speech in real time and probes the loop every 5 ms; prints the lag (not asserted) and how
    long after the end of speech the final transcript came, with and without speculation."""

    def measure(params: str) -> tuple[list[float], list[float], list[float], str]:
        stamps: list[tuple[str, float, SessionEvent]] = []

        def on_event(e: SessionEvent) -> None:
            stamps.append((e.kind, time.perf_counter(), e))

        s = stt_session("user_02.wav, user_05.wav", params, gap=0.0, realtime=True, on_event=on_event)
        lags: list[tuple[float, float]] = []

        async def main() -> None:
            task = asyncio.get_running_loop().create_task(s.run())
            while not task.done():
                t = time.perf_counter()
                await asyncio.sleep(0.005)
                lags.append((t, time.perf_counter() - t - 0.005))
            assert (await task).ok

        asyncio.run(main())
        busy = [(at - e.data["infer_s"], at) for kind, at, e in stamps if kind == "stt_run"]
        during = [lag for t, lag in lags if any(a <= t <= b for a, b in busy)]
        ends = [
            at
            for kind, at, e in stamps
            if kind == "frame" and isinstance(f := e.data["frame"], VadFrame) and f.kind == "end"
        ]
        finals = [
            at for kind, at, e in stamps if kind == "frame" and isinstance(e.data["frame"], TranscriptFrame)
        ]
        waits = [f - max(e for e in ends if e <= f) for f in finals]
        return [lag for _, lag in lags], during, waits, " | ".join(t.text for t in transcripts(s))

    def p99(xs: list[float]) -> float:
        return sorted(xs)[min(len(xs) - 1, int(len(xs) * 0.99))] * 1e3

    all_lags, during, spec_waits, spec_text = measure("")
    _, _, plain_waits, plain_text = measure("speculative: false")
    print(
        f"\nevent-loop lag (5 ms probe) while Whisper runs: p50 {statistics.median(during) * 1e3:.2f} ms, "
        f"p99 {p99(during):.2f} ms, max {max(during) * 1e3:.2f} ms over {len(during)} samples; "
        f"whole session p99 {p99(all_lags):.2f} ms"
        f"\nVAD end -> final transcript (endpoint_silence_ms 300): speculative "
        f"{', '.join(f'{w:.3f}' for w in spec_waits)} s, not speculative {', '.join(f'{w:.3f}' for w in plain_waits)} s"
    )
    assert spec_text == plain_text == ("Can you tell me the joke? | Turn off the lights in the kitchen.")
    assert during  # the probe did run while the model was busy
