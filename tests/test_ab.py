"""``ah ab``: pairing, bootstrap intervals, --fail-if, and the reports, through the CLI.

The end-to-end tests play five conversations of the corpus (a barge-in, two noises, a backchannel, a clean turn)
through the silence and overlap-aware variants of AH-001 on the virtual clock, so every figure is
exact: the overlap-aware policy pauses on the noises where silence cuts the agent off for good.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ah.ab.condition import Condition, ConditionError
from ah.ab.stats import compare, paired_interval

ROOT = Path(__file__).resolve().parents[1]
AH = [sys.executable, "-m", "ah.cli"]
EXP = ROOT / "experiments" / "AH-001"
CORPUS = ROOT / "experiments" / "conversations"
SCRIPTS = ["barge_in_01.yaml", "noise_01.yaml", "noise_02.yaml", "backchannel_01.yaml", "clean_01.yaml"]


def test_paired_bootstrap_finds_a_shift_and_none_where_there_is_none() -> None:
    rng = np.random.default_rng(7)
    a = rng.normal(600, 80, 60)  # turns differ a lot from each other...
    b = a - 25 + rng.normal(0, 5, 60)  # ...but B is 25 ms faster on each: pairing must see it
    shift = paired_interval(a, b)
    assert shift is not None and shift.high < 0 and shift.low < -25 < shift.high
    half = rng.normal(0, 5, 30)
    same = paired_interval(a, a + np.concatenate([half, -half]))  # noise whose mean is exactly 0
    assert same is not None and same.low < 0 < same.high
    unpaired_width = np.std(a) * 2 * 1.96 / np.sqrt(60)
    assert shift.high - shift.low < unpaired_width / 5, "pairing removes the between-turn spread"


def test_compare_pairs_by_key_and_averages_repeats() -> None:
    a = {
        "s#0": [{"response_latency_ms": 500.0}, {"response_latency_ms": 520.0}],
        "s#1": [{"false_cut_off": True}],
    }
    b = {
        "s#0": [{"response_latency_ms": 400.0}],
        "t#0": [{"response_latency_ms": 1.0}],
        "s#1": [{"false_cut_off": False}],
    }
    by = {c.figure: c for c in compare(a, b)}
    ttfb = by["response_latency_ms"]
    assert ttfb.n_pairs == 1 and ttfb.pairs == [("s#0", 510.0, 400.0)]
    assert ttfb.diff_mean is not None and ttfb.diff_mean.estimate == -110.0
    assert ttfb.b["n"] == 2, "distributions keep every observation, paired or not"
    assert by["false_cut_off"].a["rate"] == 1.0 and by["false_cut_off"].b["rate"] == 0.0
    assert by["barge_in_reaction_ms"].verdict == "no pairs"


@pytest.mark.parametrize(
    "text",
    ["B.foo_p99 > 1", "__import__('os').system('true')", "B.ttfb_p99 >", "C.ttfb_p99 > 1", "B.ttfb_p99()"],
)
def test_bad_conditions_are_refused(text: str) -> None:
    with pytest.raises(ConditionError):
        Condition(text)


def test_conditions_evaluate_on_the_comparison() -> None:
    a = {f"k{i}#0": [{"response_latency_ms": 100.0 + i}] for i in range(10)}
    b = {f"k{i}#0": [{"response_latency_ms": 130.0 + i}] for i in range(10)}
    cmp = compare(a, b)
    assert Condition("B.ttfb_p99 > A.ttfb_p99 * 1.1").evaluate(cmp)[0]
    assert not Condition("B.ttfb_p99 > A.ttfb_p99 * 1.5").evaluate(cmp)[0]
    assert Condition("diff.ttfb_mean_low > 0 and B.ttfb_n == 10").evaluate(cmp)[0]
    holds, why = Condition("B.barge_in_p99 > 0").evaluate(cmp)
    assert not holds and "no data" in why


def ab(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    scripts = [arg for s in SCRIPTS for arg in ("--corpus", str(CORPUS / s))]
    return subprocess.run(
        [*AH, "ab", str(EXP / "silence.yaml"), str(EXP / "overlap_aware.yaml"), *scripts, "--virtual",
         "--out", str(tmp_path / "report"), *extra],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def test_ab_cli_reports_and_exit_codes(tmp_path: Path) -> None:
    ok = ab(tmp_path, "--repeats", "2", "--tail-ms", "2000", "--fail-if", "B.false_cut_off_rate > 0")
    assert ok.returncode == 0, ok.stderr + ok.stdout
    assert "20/20" in ok.stderr, "progress counts every conversation of both variants, each repeat"
    data = json.loads((tmp_path / "report" / "ab.json").read_text())
    figures = {f["figure"]: f for f in data["figures"]}
    # The cough: silence cuts the agent off for good, overlap-aware pauses and resumes.
    assert figures["false_cut_off"]["A"]["rate"] == 1.0 and figures["false_cut_off"]["B"]["rate"] == 0.0
    assert figures["false_cut_off"]["verdict"] == "B better"
    assert figures["response_latency_ms"]["n_pairs"] >= 2
    assert all(len(reps) == 2 for reps in data["turns"]["A"].values()), "two repeats per turn"
    assert data["conditions"] == [
        {
            "condition": "B.false_cut_off_rate > 0",
            "holds": False,
            "explanation": "B.false_cut_off_rate > 0: false",
        }
    ]
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| false_cut_off (false_cut_off) | rate | 100.0 % | 0.0 % |" in md
    page = (tmp_path / "report" / "report.html").read_text()
    assert len(re.findall(r'<img alt="[a-z_]+" src="data:image/png;base64,', page)) == 3
    for png in ("latency_distributions", "paired_differences", "interruption_outcomes"):
        assert (tmp_path / "report" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"

    failed = ab(tmp_path, "--fail-if", "A.false_cut_off_rate > B.false_cut_off_rate")
    assert failed.returncode == 4, failed.stderr + failed.stdout
    assert "FAILED A.false_cut_off_rate > B.false_cut_off_rate: TRUE" in failed.stdout

    usage = ab(tmp_path, "--fail-if", "B.latency_p99 > 1")
    assert usage.returncode == 2 and "unknown name 'latency_p99'" in usage.stderr
