"""The engine-only demo graph loads and runs to completion on a virtual clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ah.runtime.clock import VirtualClock
from ah.runtime.graph_loader import load_graph
from ah.runtime.session import Session

ROOT = Path(__file__).resolve().parents[1]


def test_tone_demo_runs_on_a_virtual_clock() -> None:
    graph = load_graph(ROOT / "graphs" / "examples" / "tone_demo.yaml")
    session = Session(graph, clock=VirtualClock(auto_advance=True))
    result = asyncio.run(session.run())
    assert result.ok
    assert result.channels["out.inp"]["delivered"] == 50
    summary = [e for e in session.events if e.kind == "sink_summary"]
    assert summary[0].data == {"frames": 50, "audio_s": 1.0}
