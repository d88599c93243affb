"""The level of the user's audio in 10 ms frames, against its own noise floor and speech level.

Not a node type: a helper for STT nodes that want a cue for the end of speech sooner than the VAD's
scores give one. Silero's score trails the speech by two or three 32 ms windows (its recurrent
state takes that long to forget a word), and a window is only scored once all of it has come; the
level of the audio drops the moment the speech stops, in whatever chunk the client sends it.

"Quiet" is relative, never digital silence: a frame is quiet when it is below both the speech
level less :data:`SPEECH_DROP_DB` (the loudest frame of the utterance so far) and the noise floor
plus :data:`FLOOR_MARGIN_DB` (the quietest frame of the last :data:`FLOOR_S` seconds, a
minimum-statistics estimate: a noise floor is what the quietest moments sound like). That is, the
higher of the two. When the noise is so loud that the threshold would sit within
:data:`MIN_RANGE_DB` of the speech level, the meter says it cannot tell (``threshold`` is None) and
the caller relies on the VAD alone.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

SR = 16000
FRAME = 160  # samples: 10 ms
#: How far below the utterance's loudest frame a quiet frame is (at least).
SPEECH_DROP_DB = 45.0
#: How far above the noise floor a quiet frame may be (at most), so a steady noise floor counts as quiet.
FLOOR_MARGIN_DB = 6.0
#: The threshold must be at least this far below the speech level, or the meter does not judge.
MIN_RANGE_DB = 25.0
#: The noise floor is the quietest frame of this many seconds.
FLOOR_S = 2.0
_SILENT_DB = -100.0  # a frame's level never goes below this (digital silence included)
_POWER_SCALE = 1.0 / (FRAME * 32768.0 * 32768.0)  # a frame's summed squared int16 samples -> mean square


class LevelMeter:
    """Per-frame levels (dBFS) of a 16 kHz PCM16 stream, its noise floor and the speech level."""

    def __init__(self) -> None:
        self._rest = np.zeros(0, dtype="<i2")
        self.frames = 0  # frames measured so far; frame k ends at (k + 1) * 10 ms of audio time
        self._fed = 0  # samples fed, measured or deferred
        self._deferred: list[bytes] = []  # audio fed with measure=False, not measured yet
        self._deferred_n = 0  # samples in it
        self._floor_n = round(FLOOR_S * SR / FRAME)
        self._keep_n = (self._floor_n + 1) * FRAME  # deferred samples kept (a frame more than the floor's)
        self._mins: deque[tuple[int, float]] = deque()  # (frame, dB), increasing dB: a sliding minimum
        self._recent: deque[tuple[float, float]] = deque(maxlen=self._floor_n)  # (t_end, dB)
        self.speech_db = _SILENT_DB  # the loudest frame since ``start_speech``

    @property
    def t(self) -> float:
        """Audio time (s) of the whole frames fed so far (deferred ones count: they will be measured
        before anything reads a level)."""
        return self._fed // FRAME * FRAME / SR

    @property
    def floor_db(self) -> float:
        self._catch_up()
        return self._mins[0][1] if self._mins else _SILENT_DB

    def feed(self, pcm: bytes, *, measure: bool = True) -> list[tuple[float, float]]:
        """Measure new audio; returns ``(t_end, dB)`` of each frame it completed.

        ``measure=False`` (the caller needs no level now: outside speech) keeps the audio to measure
        later, when a level is next asked for (``start_speech``, or a ``feed`` that measures). Then it
        is measured in one pass, and the floor and speech level are what measuring every chunk at once
        would have made them. Measuring 25-40 chunks a second of every session as they came was the
        largest single cost on the event loop at 100 sessions (experiments/capacity.py); a session
        speaks a fraction of the time. Only the last FLOOR_S + 1 s are kept: older audio cannot reach
        the floor or the speech level."""
        self._fed += len(pcm) // 2
        if not measure:
            self._deferred.append(pcm)
            self._deferred_n += len(pcm) // 2
            if self._deferred_n > self._keep_n + SR:
                self._trim()
            return []
        self._catch_up()
        return self._measure(pcm)

    def _catch_up(self) -> None:
        if self._deferred:
            pcm = b"".join(self._deferred)
            self._deferred.clear()
            self._deferred_n = 0
            self._measure(pcm)

    def _trim(self) -> None:
        """Drop whole frames from the front of the deferred audio, keeping the last ``_keep_n`` samples
        or a little more. A dropped frame is counted (time goes on) but never measured: it would have
        left the floor's window and the recent frames before anyone looked."""
        x = np.concatenate((self._rest, np.frombuffer(b"".join(self._deferred), dtype="<i2")))
        drop = (len(x) - self._keep_n) // FRAME * FRAME
        self.frames += drop // FRAME
        self._rest = np.zeros(0, dtype="<i2")
        self._deferred = [x[drop:].tobytes()]
        self._deferred_n = len(x) - drop

    def _measure(self, pcm: bytes) -> list[tuple[float, float]]:
        # Integer samples and one C call for the frames' energies: this runs for every chunk of every
        # session on the event loop, where numpy's per-call overhead (a float copy, a scaling, a
        # Python-level mean) cost more than the arithmetic (capacity.py's profile at 100 sessions).
        x = np.frombuffer(pcm, dtype="<i2")
        if len(self._rest):
            x = np.concatenate((self._rest, x))
        n = len(x) // FRAME
        self._rest = x[n * FRAME :]
        if not n:
            return []
        frames = x[: n * FRAME].reshape(n, FRAME).astype(np.int64)
        energy = np.einsum("ij,ij->i", frames, frames).tolist()  # exact: int64 sums of int16 squares
        out = []
        for e in energy:
            p = e * _POWER_SCALE  # mean square of the frame, full scale = 1.0
            db = max(_SILENT_DB, 10 * math.log10(p)) if p > 0 else _SILENT_DB
            k = self.frames
            self.frames += 1
            while self._mins and self._mins[-1][1] >= db:
                self._mins.pop()
            self._mins.append((k, db))
            while self._mins[0][0] <= k - self._floor_n:
                self._mins.popleft()
            out.append((self.frames * FRAME / SR, db))
        self._recent.extend(out)
        return out

    def start_speech(self, since: float) -> None:
        """A new utterance began at audio time ``since`` (the VAD says so after the fact): its speech
        level is the loudest frame measured since then."""
        self._catch_up()
        self.speech_db = max((db for t, db in self._recent if t > since), default=_SILENT_DB)

    def threshold(self, db: float) -> float | None:
        """Count frame level ``db`` into the speech level, then return the level below which a frame is
        quiet, or None when the noise is too close to the speech to tell."""
        self.speech_db = max(self.speech_db, db)
        thr = max(self.floor_db + FLOOR_MARGIN_DB, self.speech_db - SPEECH_DROP_DB)
        return thr if thr <= self.speech_db - MIN_RANGE_DB else None
