"""The conversation simulator: scripted users played through a graph, timelines and per-turn metrics.

Public API (``ah simulate`` and ``ah ab`` are built on it)::

    from ah.sim import load_scenario, simulate, simulate_many

    results = simulate("graphs/default.yaml", ["experiments/conversations/barge_in_01.yaml"], realtime=True)
    for r in results:
        for turn in r.turns:             # TurnMetrics, key "scenario#step" pairs two variants' turns
            print(turn.key, turn.response_latency_ms, turn.false_cut_off)
        r.timeline.to_json()             # what happened, when; draw it with ah.sim.plot.draw_timeline
"""

from ah.sim.metrics import TurnMetrics, summary, turn_metrics
from ah.sim.player import Link, Player, Timeline
from ah.sim.run import ScenarioResult, simulate, simulate_many, simulate_realtime, simulate_virtual
from ah.sim.script import Scenario, ScriptError, Step, load_clip, load_scenario

__all__ = [
    "Link",
    "Player",
    "Scenario",
    "ScenarioResult",
    "ScriptError",
    "Step",
    "Timeline",
    "TurnMetrics",
    "load_clip",
    "load_scenario",
    "simulate",
    "simulate_many",
    "simulate_realtime",
    "simulate_virtual",
    "summary",
    "turn_metrics",
]
