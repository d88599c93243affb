"""``LevelMeter`` measuring later what it was fed unmeasured: the levels it gives must be the ones it
gives when it measures every chunk as it comes (the STT defers outside speech to save the event loop)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ah.nodes.audio_level import SR, LevelMeter

# A chunk: its length in samples (any, so frames straddle chunks), its loudness, and whether the caller
# needs levels now (measure) or not.
chunks = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=2400),
        st.sampled_from([0, 3, 30, 300, 3000, 20000]),
        st.booleans(),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=60, deadline=None)
@given(chunks, st.integers(min_value=0, max_value=2**31))
def test_deferred_measuring_gives_the_levels_of_measuring_every_chunk(
    plan: list[tuple[int, int, bool]], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    eager, lazy = LevelMeter(), LevelMeter()
    fed = 0
    for n, amp, measure in plan:
        pcm = (rng.standard_normal(n) * amp).clip(-32768, 32767).astype("<i2").tobytes()
        fed += n
        expected = eager.feed(pcm)
        got = lazy.feed(pcm, measure=measure)
        assert lazy.t == eager.t == fed // 160 * 160 / SR
        if measure:
            assert got == expected
            assert lazy.floor_db == eager.floor_db
            for _t, db in got:
                assert lazy.threshold(db) == eager.threshold(db)
        elif rng.random() < 0.2:  # the VAD says speech began a little while ago
            since = max(0.0, fed / SR - 0.2)
            eager.start_speech(since)
            lazy.start_speech(since)
            assert lazy.speech_db == eager.speech_db
            assert lazy.floor_db == eager.floor_db


def test_deferred_audio_is_bounded() -> None:
    """Minutes of silence fed unmeasured keep only the last seconds (the floor's window)."""
    meter = LevelMeter()
    second = bytes(2 * SR)
    for _ in range(120):
        meter.feed(second, measure=False)
    assert sum(len(b) for b in meter._deferred) <= 2 * (4 * SR)
    assert meter.t == 120.0
    assert meter.feed(bytes(320)) == [(120.01, -100.0)]


def test_a_quiet_moment_inside_the_floor_window_survives_the_trim() -> None:
    rng = np.random.default_rng(7)

    def noise(seconds: float, amp: float) -> bytes:
        return (rng.standard_normal(int(seconds * SR)) * amp).astype("<i2").tobytes()

    eager, lazy = LevelMeter(), LevelMeter()
    # 1.95 s before the end there is 0.2 s of near silence: inside the floor's 2 s, after a trim.
    for pcm in (noise(1.5, 300), noise(0.2, 3), noise(1.75, 300)):
        eager.feed(pcm)
        lazy.feed(pcm, measure=False)
    assert len(lazy._deferred) == 1  # it was trimmed
    assert lazy.floor_db == eager.floor_db < -70
