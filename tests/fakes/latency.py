"""Latency distributions and fault plans for the fake cloud servers.

Why: a fake that answers instantly tests nothing about time. Every provider step of a fake (time to
first token, per-token gap, transcription time, time to first audio, connection set-up) draws from a
:class:`Latency`, and every request may be hit by a fault drawn from a :class:`FaultPlan` (random
rates, for soak and capacity runs) or forced (``plan.force("429")``, for tests that must be exact).
Both are plain data, so a benchmark script sets them from published figures and command-line flags.
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from dataclasses import dataclass, field

#: z-score of the 95th percentile of a standard normal distribution.
_Z95 = 1.6448536269514722


@dataclass(frozen=True, slots=True)
class Latency:
    """A latency in milliseconds: fixed (``p95_ms`` unset) or log-normal with that median and p95.

    Log-normal because service latencies are: bounded below, with a long right tail. A median and a
    95th percentile are what providers and third-party benchmarks publish, so they are the parameters.
    """

    median_ms: float = 0.0
    p95_ms: float | None = None

    def __post_init__(self) -> None:
        if self.median_ms < 0 or (self.p95_ms is not None and self.p95_ms < self.median_ms):
            raise ValueError(f"bad latency {self}: need 0 <= median <= p95")

    @classmethod
    def parse(cls, text: str) -> Latency:
        """``"120"`` (fixed) or ``"120:250"`` (median:p95), in ms: the command-line form."""
        median, _, p95 = text.partition(":")
        return cls(float(median), float(p95) if p95 else None)

    @property
    def sigma(self) -> float:
        if self.p95_ms is None or self.median_ms <= 0 or self.p95_ms == self.median_ms:
            return 0.0
        return math.log(self.p95_ms / self.median_ms) / _Z95

    def sample_s(self, rng: random.Random) -> float:
        """One draw, in seconds."""
        sigma = self.sigma
        if sigma == 0.0:
            return self.median_ms / 1000
        return math.exp(rng.gauss(math.log(self.median_ms), sigma)) / 1000

    def __str__(self) -> str:
        return f"{self.median_ms:g}" + (f":{self.p95_ms:g}" if self.p95_ms is not None else "") + " ms"


@dataclass(slots=True)
class FaultPlan:
    """Which fault (if any) hits the next request: forced ones first (in order), else random by rate.

    Fault names are the fake's own (see each fake's ``FAULTS``). Thread-safe: a fake's handler threads
    and the test that forces faults share one plan.
    """

    rates: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    _forced: deque[str] = field(default_factory=deque)
    _rng: random.Random = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: How many of each fault were injected so far.
    injected: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        total = sum(self.rates.values())
        if any(r < 0 for r in self.rates.values()) or total > 1:
            raise ValueError(f"fault rates must be >= 0 and add up to <= 1: {self.rates}")

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> FaultPlan:
        """``"429=0.01,disconnect=0.005"``: the command-line form."""
        rates: dict[str, float] = {}
        for item in filter(None, (s.strip() for s in text.split(","))):
            name, _, rate = item.partition("=")
            rates[name.strip()] = float(rate)
        return cls(rates, seed)

    def force(self, *faults: str) -> None:
        """The next ``len(faults)`` requests get these faults, in order."""
        with self._lock:
            self._forced.extend(faults)

    def draw(self) -> str | None:
        with self._lock:
            if self._forced:
                fault: str | None = self._forced.popleft()
            else:
                fault = None
                x = self._rng.random()
                for name, rate in self.rates.items():
                    if x < rate:
                        fault = name
                        break
                    x -= rate
            if fault is not None:
                self.injected[fault] = self.injected.get(fault, 0) + 1
            return fault
