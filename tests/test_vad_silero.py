"""``vad.silero`` on real audio: one segment per utterance near the true bounds, exact and per-session.

The fixtures are Piper-made user speech (tests/fixtures/audio/make_fixtures.py); the true speech bounds
come from each file's own energy. Every run is deterministic (ONNX Runtime on one thread), so two runs
of the same audio must give identical scores, whatever the frame size and whatever runs beside them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from ah.nodes.model_store import MANIFEST, ModelMissing, is_present
from ah.runtime.frames import AudioFrame, VadFrame
from ah.runtime.graph_loader import GraphValidationError
from ah.runtime.session import Session
from tests.audio_nodes import energy_bounds, fixture_meta, read_wav, session, utterances
from tests.runtime_nodes import frames_of

pytestmark = pytest.mark.skipif(
    not is_present(MANIFEST["silero-vad"]), reason="silero-vad model not pulled (ah models pull silero-vad)"
)

GRAPH = """
graph: vad_test
nodes:
  src:  {type: test.wav_source, params: {files: [%(files)s], frame_ms: %(frame_ms)d}}
  vad:  {type: vad.silero%(params)s}
  ev:   {type: test.recorder}
  pcm:  {type: test.recorder}
edges:
  - src.audio -> vad.audio
  - vad.events -> ev.inp
  - vad.audio_out -> pcm.inp
"""


def vad_session(files: str, frame_ms: int = 20, params: str = "") -> Session:
    return session(GRAPH % {"files": files, "frame_ms": frame_ms, "params": params})


def run_all(*sessions: Session) -> None:
    async def main() -> None:
        results = await asyncio.wait_for(asyncio.gather(*(s.run() for s in sessions)), 60)
        for r in results:
            assert r.ok, r.failure

    asyncio.run(main())


def vad_events(s: Session) -> list[VadFrame]:
    out = []
    for f in frames_of(s, "ev"):
        assert isinstance(f, VadFrame)
        out.append(f)
    return out


def changes(s: Session) -> list[tuple[str, float]]:
    return [(f.kind, f.t) for f in vad_events(s) if f.kind != "score"]


def scores(s: Session) -> list[float]:
    return [f.score for f in vad_events(s) if f.kind == "score"]


def test_one_segment_per_utterance_near_the_true_bounds() -> None:
    names = utterances()
    sessions = [vad_session(n) for n in names]
    run_all(*sessions)  # side by side: they share the model, never its state
    for name, s in zip(names, sessions, strict=True):
        true_start, true_end = energy_bounds(name)
        segs = changes(s)
        assert [k for k, _ in segs] == ["start", "end"], (name, segs)
        (_, start), (_, end) = segs
        assert true_start - 0.1 <= start <= true_start + 0.05, (name, start, true_start)
        assert true_end - 0.05 <= end <= true_end + 0.25, (name, end, true_end)
        sc = scores(s)
        assert len(sc) == len(read_wav(name)) // 512
        assert all(0.0 <= x <= 1.0 for x in sc)
        assert max(sc) > 0.9 and min(sc) < 0.1
        ts = [f.t for f in vad_events(s) if f.kind == "score"]
        assert ts == pytest.approx([(i + 1) * 0.032 for i in range(len(ts))])
    assert len({id(s.nodes["vad"]._model) for s in sessions}) == 1  # type: ignore[attr-defined]
    # The audio passes through unchanged.
    pcm = b"".join(f.pcm for f in frames_of(sessions[0], "pcm") if isinstance(f, AudioFrame))
    assert pcm == read_wav(names[0]).tobytes()


def test_a_pause_splits_speech_and_a_cough_is_not_speech() -> None:
    pause, cough = vad_session("pause_700ms.wav"), vad_session("cough.wav")
    run_all(pause, cough)
    spans = fixture_meta()["pause_700ms.wav"]["speech"]
    segs = changes(pause)
    assert [k for k, _ in segs] == ["start", "end", "start", "end"], segs
    for (a, b), (_, start), (_, end) in zip(spans, segs[0::2], segs[1::2], strict=True):
        assert a - 0.1 <= start <= a + 0.05 and b - 0.05 <= end <= b + 0.25, (spans, segs)
    assert changes(cough) == []
    assert max(scores(cough)) < 0.5


def test_state_does_not_leak_between_sessions_nor_depend_on_frame_size() -> None:
    a_alone, b_alone = vad_session("user_01.wav"), vad_session("user_02.wav")
    run_all(a_alone)
    run_all(b_alone)
    # Side by side, interleaved frame by frame, and with 1 s frames (scored off the event loop).
    a_beside, b_beside = vad_session("user_01.wav"), vad_session("user_02.wav")
    run_all(a_beside, b_beside)
    a_big = vad_session("user_01.wav", frame_ms=1000)
    run_all(a_big)
    assert scores(a_beside) == scores(a_alone) == scores(a_big)
    assert scores(b_beside) == scores(b_alone)
    assert changes(a_beside) == changes(a_alone) == changes(a_big)
    assert changes(b_beside) == changes(b_alone)
    assert scores(a_alone) != scores(b_alone)[: len(scores(a_alone))]


def test_thresholds_and_timing_params_change_decisions() -> None:
    strict = vad_session("pause_700ms.wav", params=", params: {min_silence_ms: 1000, speech_pad_ms: 0}")
    run_all(strict)
    segs = changes(strict)
    assert [k for k, _ in segs] == ["start", "end"], segs  # the 700 ms pause no longer ends the segment
    with pytest.raises(GraphValidationError, match="neg_threshold"):
        vad_session("user_01.wav", params=", params: {threshold: 0.3, neg_threshold: 0.6}")


def test_a_missing_model_fails_the_session_at_setup_naming_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AH_MODELS_DIR", str(tmp_path))
    s = vad_session("user_01.wav")
    result = asyncio.run(s.run())
    assert not result.ok and result.failure is not None
    assert result.failure.node_id == "vad"
    assert isinstance(result.failure.error, ModelMissing)
    assert "ah models pull silero-vad" in str(result.failure.error)
    assert frames_of(s) == []  # it failed before any node ran


def test_sessions_scored_in_one_batch_get_what_each_gets_alone() -> None:
    """The process-wide batcher mixes sessions in one ONNX call; no session may hear another's audio."""
    from ah.nodes.vad_batcher import WINDOW, SileroState, batcher, score_batch
    from ah.nodes.vad_silero import POOL, _load_model

    model = _load_model()
    clips = [read_wav(name).astype("<i2") for name in ("user_01.wav", "user_03.wav", "cough.wav")]

    def alone(x: np.ndarray) -> list[float]:
        from ah.nodes.vad_batcher import _Request

        state, probs = SileroState(), []
        for i in range(len(x) // WINDOW):  # one window per call, batch of one: the reference
            r = _Request(state, x[None, i * WINDOW : (i + 1) * WINDOW], None)  # type: ignore[arg-type]
            score_batch(model, [r])
            assert r.state is not None and r.context is not None
            state.state, state.context = r.state, r.context
            probs += r.probs
        return probs

    async def together() -> tuple[list[list[float]], int]:
        scorer = batcher(model, POOL)
        steps = (1, 3, 2)  # windows per frame differ per session, so batches are ragged

        async def run(x: np.ndarray, step: int) -> list[float]:
            state, probs = SileroState(), []
            n = len(x) // WINDOW
            for i in range(0, n, step):
                probs += await scorer.score(state, x[i * WINDOW : min(n, i + step) * WINDOW])
            return probs

        out = await asyncio.gather(*(run(x, k) for x, k in zip(clips, steps, strict=True)))
        return list(out), scorer.largest

    batched, largest = asyncio.run(together())
    assert largest > 1  # they did share calls
    for x, probs in zip(clips, batched, strict=True):
        ref = alone(x)
        assert len(probs) == len(ref) == len(x) // WINDOW
        assert np.allclose(probs, ref, atol=1e-5), max(abs(a - b) for a, b in zip(probs, ref, strict=True))


def test_a_vad_that_fell_behind_scores_its_backlog_in_few_requests() -> None:
    """Frames that queued while the VAD waited for its last windows go in one request: under load a
    session catches up in one batch, not one batcher round trip per frame (which is no faster than real
    time). The source here is unpaced, so the VAD is behind on every frame; its decisions must be those
    of a VAD that saw the frames one by one."""
    from ah.nodes.vad_batcher import _batchers

    behind = vad_session("user_01.wav", frame_ms=20)

    async def main() -> tuple[int, int]:
        result = await asyncio.wait_for(behind.run(), 60)
        assert result.ok, result.failure
        (scorer,) = _batchers[asyncio.get_running_loop()].values()
        return scorer.requests, len(frames_of(behind, "pcm"))

    requests, frames = asyncio.run(main())
    windows = len(scores(behind))
    assert frames > 100 and windows > 60
    assert requests <= frames // 4, (requests, frames)  # one per frame before
    one_by_one = vad_session("user_01.wav", frame_ms=1000)  # reference decisions: see the test above
    run_all(one_by_one)
    assert scores(behind) == scores(one_by_one)
    assert changes(behind) == changes(one_by_one)
