"""Pairing and statistics for A/B comparisons of graph variants.

The input is deliberately small: for each variant, the per-turn figures of every played turn, keyed
by what identifies the same moment of the same conversation in both variants (``scenario#step``),
one list entry per repeat. Turns are paired by key; a figure is compared on the keys where both
variants have it. Repeats of a key are averaged first, so the unit of resampling is the scripted
turn (what differs between turns is the conversation, which is what a bootstrap should resample).

Confidence intervals come from :func:`scipy.stats.bootstrap` (BCa, paired resampling of keys), never
from a hand-written resampler. Booleans (``false_cut_off``, ``premature``) are rates: their mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

Value = float | int | bool | str | None
#: key ("scenario#step") -> one figures dict per repeat.
Samples = Mapping[str, Sequence[Mapping[str, Value]]]

#: Figures compared, in report order: name -> (short alias for --fail-if, unit, lower is better).
FIGURES: dict[str, tuple[str, str, bool]] = {
    "response_latency_ms": ("ttfb", "ms", True),
    "barge_in_reaction_ms": ("barge_in", "ms", True),
    "interruption_client_ms": ("interruption", "ms", True),
    "cancel_tail_server_ms": ("cancel_tail", "ms", True),
    "resume_ms": ("resume", "ms", True),
    "false_cut_off": ("false_cut_off", "rate", True),
    "premature": ("premature", "rate", True),
    "paused": ("paused", "rate", False),
}
ALIASES = {alias: name for name, (alias, _, _) in FIGURES.items()}
CONFIDENCE = 0.95
#: Fewer paired turns than this get no verdict (and no interval: nothing to resample).
MIN_PAIRS = 3


@dataclass(slots=True)
class Interval:
    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, float | None]:
        return {"estimate": _r(self.estimate), "low": _r(self.low), "high": _r(self.high)}


@dataclass(slots=True)
class FigureComparison:
    figure: str
    unit: str
    lower_is_better: bool
    n_pairs: int
    a: dict[str, float | None]
    b: dict[str, float | None]
    #: B - A: of the means (rates for booleans) and of the 95th percentiles, paired by key.
    diff_mean: Interval | None = None
    diff_p95: Interval | None = None
    pairs: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        d = self.diff_mean
        if d is None:
            return "no pairs"
        if self.n_pairs < MIN_PAIRS:
            return "too few pairs"
        if not d.excludes_zero:
            return "no clear difference"
        better = (d.estimate < 0) == self.lower_is_better
        return "B better" if better else "B worse"

    def to_json(self) -> dict[str, Any]:
        return {
            "figure": self.figure,
            "unit": self.unit,
            "n_pairs": self.n_pairs,
            "A": self.a,
            "B": self.b,
            "diff_mean": self.diff_mean.to_json() if self.diff_mean else None,
            "diff_p95": self.diff_p95.to_json() if self.diff_p95 else None,
            "verdict": self.verdict,
        }


def _r(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 3)


def values(samples: Samples, figure: str) -> dict[str, float]:
    """Per key, the mean of a figure over the repeats that have it (booleans as 0/1)."""
    out: dict[str, float] = {}
    for key, repeats in samples.items():
        xs = [float(r[figure]) for r in repeats if r.get(figure) is not None]  # type: ignore[arg-type]
        if xs:
            out[key] = sum(xs) / len(xs)
    return out


def all_values(samples: Samples, figure: str) -> list[float]:
    """Every observation of a figure, repeats included (distributions, percentiles)."""
    return [float(r[figure]) for reps in samples.values() for r in reps if r.get(figure) is not None]  # type: ignore[arg-type]


def describe(xs: Sequence[float]) -> dict[str, float | None]:
    """n, mean, p50, p95, p99, max (None when there is nothing)."""
    if not xs:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "p99": None, "max": None}
    a = np.asarray(xs, dtype=float)
    return {
        "n": len(xs),
        "mean": _r(float(a.mean())),
        "p50": _r(float(np.percentile(a, 50))),
        "p95": _r(float(np.percentile(a, 95))),
        "p99": _r(float(np.percentile(a, 99))),
        "max": _r(float(a.max())),
    }


def paired_interval(
    a: np.ndarray, b: np.ndarray, statistic: str = "mean", *, seed: int = 0, n_resamples: int = 4999
) -> Interval | None:
    """B - A of ``statistic`` (mean or pNN) with a paired BCa bootstrap interval (scipy)."""
    if len(a) == 0:
        return None

    def stat(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        if statistic == "mean":
            return np.asarray(np.mean(y, axis=axis) - np.mean(x, axis=axis))
        q = float(statistic[1:])
        return np.asarray(np.percentile(y, q, axis=axis) - np.percentile(x, q, axis=axis))

    estimate = float(stat(a, b))
    if len(a) < MIN_PAIRS or np.ptp(b - a) == 0:
        # Too few pairs to resample, or every pair differs by the same amount: that is the difference.
        return Interval(estimate, estimate, estimate) if len(a) >= 1 else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples (all ties) are reported as NaN below
        res = stats.bootstrap(
            (a, b),
            stat,
            paired=True,
            vectorized=True,
            confidence_level=CONFIDENCE,
            n_resamples=n_resamples,
            method="BCa",
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap(
                (a, b), stat, paired=True, vectorized=True, confidence_level=CONFIDENCE,
                n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed),
            )  # fmt: skip
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Interval(estimate, min(low, estimate), max(high, estimate))


def compare(
    a: Samples, b: Samples, figures: Sequence[str] | None = None, *, seed: int = 0
) -> list[FigureComparison]:
    """Every figure, A against B, paired by key."""
    out: list[FigureComparison] = []
    for name in figures or list(FIGURES):
        _, unit, lower = FIGURES.get(name, (name, "", True))
        va, vb = values(a, name), values(b, name)
        keys = sorted(set(va) & set(vb))
        xa = np.array([va[k] for k in keys], dtype=float)
        xb = np.array([vb[k] for k in keys], dtype=float)
        da, db = describe(all_values(a, name)), describe(all_values(b, name))
        if unit == "rate":
            da["rate"], db["rate"] = da["mean"], db["mean"]
        cmp = FigureComparison(name, unit, lower, len(keys), da, db)
        cmp.pairs = [(k, float(x), float(y)) for k, x, y in zip(keys, xa, xb, strict=True)]
        if keys:
            cmp.diff_mean = paired_interval(xa, xb, "mean", seed=seed)
            if unit != "rate":
                cmp.diff_p95 = paired_interval(xa, xb, "p95", seed=seed)
        out.append(cmp)
    return out
