"""Playing a corpus through two graph variants with the conversation simulator (``ah.sim``).

Both variants are served at once, each by its own real server (real time) or run on a virtual clock
(``virtual=True``), and every conversation is played through A and then B before the next one, so a
change in the machine's load during the run falls on both variants alike. Each played turn becomes
one figures dict under its ``scenario#step`` key: that is the whole interface to the statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ah.ab.stats import Value
from ah.runtime.graph_loader import Graph
from ah.sim import Scenario, ScenarioResult, simulate_realtime, simulate_virtual


@dataclass
class Played:
    samples: dict[str, list[dict[str, Value]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def add(self, result: ScenarioResult, repeat: int) -> None:
        if not result.ok:
            self.failures.append(f"{result.scenario.scenario} (repeat {repeat + 1}): {result.error}")
            return
        for turn in result.turns:
            self.samples.setdefault(turn.key, []).append(turn.to_json())


@contextlib.asynccontextmanager
async def _server(graph: Graph, metrics_dir: Path | None) -> AsyncIterator[Any]:
    from ah.server.app import AgentServer, ServerConfig
    from ah.telemetry.config import MetricsConfig, TelemetryConfig
    from ah.telemetry.hub import Telemetry

    telemetry = Telemetry(TelemetryConfig(metrics=MetricsConfig(jsonl_dir=metrics_dir)))
    server = AgentServer({graph.name: graph}, ServerConfig(host="127.0.0.1", port=0), telemetry=telemetry)
    await server.preload()
    await server.start()
    try:
        yield server
    finally:
        await server.drain(2.0)


async def play_ab(
    a: Graph,
    b: Graph,
    scenarios: Sequence[Scenario],
    *,
    repeats: int = 1,
    virtual: bool = False,
    server_metrics: Path | None = None,
    on_result: Callable[[str, ScenarioResult], None] | None = None,
) -> tuple[Played, Played]:
    """Every scenario through A then B, ``repeats`` times; returns what each variant played."""
    played = {"A": Played(), "B": Played()}
    graphs = {"A": a, "B": b}
    async with contextlib.AsyncExitStack() as stack:
        servers: dict[str, Any] = {}
        if not virtual:
            for side, g in graphs.items():
                where = server_metrics / side if server_metrics is not None else None
                servers[side] = await stack.enter_async_context(_server(g, where))
        for rep in range(repeats):
            for sc in scenarios:
                for side, g in graphs.items():
                    try:
                        if virtual:
                            result = await simulate_virtual(g, sc)
                        else:
                            result = await simulate_realtime(g, sc, servers[side])
                    except Exception as exc:  # one broken conversation must not lose the others
                        from ah.sim.player import Timeline

                        result = ScenarioResult(
                            sc, g.name, "virtual" if virtual else "realtime", Timeline(sc.scenario), [],
                            ok=False, error=f"{type(exc).__name__}: {exc}",
                        )  # fmt: skip
                    played[side].add(result, rep)
                    if on_result is not None:
                        on_result(side, result)
    return played["A"], played["B"]
