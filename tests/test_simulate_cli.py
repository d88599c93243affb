"""`ah simulate` as a user runs it: a graph and scripts in, timelines, metrics and pictures out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AH = [sys.executable, "-m", "ah.cli"]
CORPUS = ROOT / "experiments" / "conversations"


def _short_reply_graph(tmp: Path) -> Path:
    """The turn-taking test graph with a one-second reply, so a real-time run stays short."""
    g = tmp / "short.yaml"
    g.write_text(
        f"extends: {ROOT / 'tests' / 'graphs' / 'turn_sim.yaml'}\n"
        "graph: short\n"
        "nodes:\n"
        "  llm: {params: {replies: ['Sure, it is sunny.']}}\n"
    )
    return g


def test_simulate_in_real_time_over_the_server_writes_timeline_metrics_and_picture(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [*AH, "simulate", str(_short_reply_graph(tmp_path)), str(CORPUS / "clean_02.yaml"), "-o", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "clean_02.json").read_text())
    assert data["mode"] == "realtime" and data["ok"]
    (turn,) = data["turns"]
    assert turn["key"] == "clean_02#0" and turn["response_latency_ms"] > 0 and turn["premature"] is False
    tl = data["timeline"]
    assert tl["agent_playout"] and tl["user"][0]["voiced"]
    kinds = [m["type"] for m in tl["messages"]]
    assert "user_transcript" in kinds and "agent_response" in kinds
    assert [s["event"] for s in tl["server"] if s["event"] == "end_of_turn"] == ["end_of_turn"]
    assert (out / "clean_02.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenarios"] == 1 and summary["response_latency_ms"]["n"] == 1
    assert "clean_02#0" in proc.stdout


def test_simulate_on_a_virtual_clock_over_a_folder_of_scripts(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    for name in ("noise_01", "backchannel_02"):
        text = (
            (CORPUS / f"{name}.yaml")
            .read_text()
            .replace("audio_dir: audio", f"audio_dir: {CORPUS / 'audio'}")
        )
        (scripts / f"{name}.yaml").write_text(text)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            *AH,
            "simulate",
            "tests/graphs/turn_sim.yaml",
            str(scripts),
            "--virtual",
            "--no-picture",
            "-o",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "virtual" and summary["scenarios"] == 2
    assert summary["false_cut_offs"] == 0 and summary["noise_and_backchannel_turns"] == 2
    assert not list(out.glob("*.png"))


def test_simulate_names_a_bad_script(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenario: x\ncategory: clean\nsteps:\n  - say: missing.wav\n")
    proc = subprocess.run(
        [*AH, "simulate", "tests/graphs/turn_sim.yaml", str(bad), "--virtual"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "bad.yaml: steps.0.say: no audio file" in proc.stderr
