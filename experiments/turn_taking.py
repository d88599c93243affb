"""Turn-taking figures (ARCHITECTURE.md §5) for the three turn policies, measured on the conversation corpus.

Plays every script of ``experiments/conversations/`` through one graph per policy (``silence``,
``overlap_aware``, ``smart_turn``) with the public simulator (``ah.sim``, what ``ah simulate`` runs) and
reports, per policy: response latency, cancel tail (server, and ``interruption`` at the client),
barge-in reaction, false-interruption resume (and how many resumed within 1 s / 2 s of the burst's end),
false cut-offs on noise and backchannel scripts, and premature ends of turn on mid-sentence pauses.

Modes (each writes its own section of ``experiments/results/turn_taking.json``):

``--mode realtime`` (default)
    ``experiments/graphs/sim_<policy>.yaml`` — real audio through the energy VAD, scripted STT / LLM /
    TTS with fixed latencies — served by the real server in this process and played over the WebSocket
    in real time. The turn policy is the only difference between the three graphs.
``--mode virtual``
    The same graphs on a virtual clock: exact and repeatable, a few seconds in all (no network, so the
    cancel-tail figures are 0 there by construction).
``--mode local``
    ``experiments/graphs/local_<policy>.yaml`` — the default agent on real local models (Silero VAD,
    Whisper tiny.en, SmolLM2, Piper), in real time. ``--limit N`` plays N scripts per category.

Run::

    .venv/bin/python experiments/turn_taking.py --mode virtual
    .venv/bin/python experiments/turn_taking.py                  # real time, ~15 min
    .venv/bin/python experiments/turn_taking.py --mode local --limit 2

A bar chart of the headline figures goes to ``experiments/results/turn_taking/figures_<mode>.png`` and one
timeline picture per category and policy to ``experiments/results/turn_taking/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from ah.sim import ScenarioResult, TurnMetrics, load_scenario, simulate_many, summary
from ah.sim.plot import draw_timeline

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "conversations"
RESULTS = HERE / "results"
POLICIES = ["silence", "overlap_aware", "smart_turn"]


def _vals(turns: list[TurnMetrics], attr: str, roles: tuple[str, ...] | None = None) -> list[float]:
    return [
        float(v) for t in turns if (roles is None or t.role in roles) and (v := getattr(t, attr)) is not None
    ]


def figures(results: list[ScenarioResult]) -> dict[str, Any]:
    turns = [t for r in results for t in r.turns]
    bursts = [t for t in turns if t.role in ("noise", "backchannel") and t.agent_speaking_at_onset]
    resumes = _vals(bursts, "resume_ms")
    pauses = [t for r in results if r.scenario.category == "pause" for t in r.turns]
    return {
        "scenarios": len(results),
        "failed": [r.scenario.scenario for r in results if not r.ok],
        "response_latency_ms": summary(_vals(turns, "response_latency_ms", ("turn", "barge_in"))),
        "cancel_tail_server_ms": summary(_vals(turns, "cancel_tail_server_ms")),
        "interruption_client_ms": summary(_vals(turns, "interruption_client_ms")),
        "barge_in_reaction_ms": summary(_vals(turns, "barge_in_reaction_ms")),
        "false_interruption_resume_ms": summary(resumes),
        "resumed_within_1s": sum(1 for v in resumes if v <= 1000),
        "resumed_within_2s": sum(1 for v in resumes if v <= 2000),
        "noise_and_backchannel_bursts_over_agent": len(bursts),
        "false_cut_offs": sum(1 for t in bursts if t.false_cut_off),
        "false_cut_offs_noise": sum(1 for t in bursts if t.false_cut_off and t.role == "noise"),
        "false_cut_offs_backchannel": sum(1 for t in bursts if t.false_cut_off and t.role == "backchannel"),
        "pause_scenarios": len(pauses),
        "premature_heard": sum(1 for t in pauses if t.premature),
        "early_end_of_turn": sum(1 for t in pauses if t.early_end_of_turn),
        "barge_ins_missed": sum(
            1
            for t in turns
            if t.role == "barge_in" and t.agent_speaking_at_onset and t.barge_in_reaction_ms is None
        ),
    }


def _pick(paths: list[Path], limit: int | None) -> list[Path]:
    if not limit:
        return paths
    by_cat: dict[str, list[Path]] = {}
    for p in paths:
        by_cat.setdefault(load_scenario(p).category, []).append(p)
    return [p for ps in by_cat.values() for p in ps[:limit]]


def _chart(mode: str, per_policy: dict[str, dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("response latency p50 / p95 (ms)", "response_latency_ms", ("p50", "p95")),
        ("barge-in reaction p50 / p95 (ms)", "barge_in_reaction_ms", ("p50", "p95")),
        ("false-interruption resume p50 / max (ms)", "false_interruption_resume_ms", ("p50", "max")),
    ]
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.6))
    x = range(len(POLICIES))
    for ax, (title, key, stats) in zip(axes, panels, strict=False):
        for j, stat in enumerate(stats):
            vals = [per_policy[p][key][stat] or 0 for p in POLICIES]
            ax.bar([i + j * 0.38 for i in x], vals, width=0.38, label=stat)
        ax.set_xticks([i + 0.19 for i in x], POLICIES, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    ax = axes[3]
    ax.bar(x, [per_policy[p]["false_cut_offs"] for p in POLICIES], color="#C44E52")
    n = per_policy[POLICIES[0]]["noise_and_backchannel_bursts_over_agent"]
    ax.set_title(f"false cut-offs (of {n} noises / backchannels)", fontsize=9)
    ax.set_xticks(list(x), POLICIES, fontsize=8)
    ax = axes[4]
    ax.bar(
        [i - 0.19 for i in x],
        [per_policy[p]["early_end_of_turn"] for p in POLICIES],
        width=0.38,
        label="decided",
    )
    ax.bar(
        [i + 0.19 for i in x], [per_policy[p]["premature_heard"] for p in POLICIES], width=0.38, label="heard"
    )
    n = per_policy[POLICIES[0]]["pause_scenarios"]
    ax.set_title(f"premature end of turn (of {n} mid-sentence pauses)", fontsize=9)
    ax.set_xticks(list(x), POLICIES, fontsize=8)
    ax.legend(fontsize=7)
    fig.suptitle(f"Turn-taking on the {n and 'conversation'} corpus — {mode}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


async def run(mode: str, limit: int | None) -> dict[str, Any]:
    paths = _pick(sorted(CORPUS.glob("*.yaml")), limit)
    prefix = "local" if mode == "local" else "sim"
    per_policy: dict[str, dict[str, Any]] = {}
    turns_out: dict[str, list[dict[str, Any]]] = {}
    pictures = RESULTS / "turn_taking"
    pictures.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    for policy in POLICIES:
        graph = HERE / "graphs" / f"{prefix}_{policy}.yaml"
        done = 0

        def progress(r: ScenarioResult, policy: str = policy) -> None:
            nonlocal done
            done += 1
            note = "" if r.ok else f"  FAILED: {r.error}"
            print(
                f"  [{policy} {done}/{len(paths)}] {r.scenario.scenario}{note}", file=sys.stderr, flush=True
            )

        results = await simulate_many(graph, paths, realtime=mode != "virtual", on_result=progress)
        per_policy[policy] = figures(results)
        turns_out[policy] = [t.to_json() for r in results for t in r.turns]
        shown: set[str] = set()
        for r in results:
            if r.scenario.category not in shown:
                shown.add(r.scenario.category)
                draw_timeline(
                    r.timeline.to_json(),
                    pictures / f"{mode}_{policy}_{r.scenario.scenario}.png",
                    f"{r.scenario.scenario} — {policy} ({mode})",
                )
    _chart(mode, per_policy, pictures / f"figures_{mode}.png")
    return {
        "mode": mode,
        "graphs": {p: f"experiments/graphs/{prefix}_{p}.yaml" for p in POLICIES},
        "scripts": len(paths),
        "wall_s": round(time.monotonic() - t0, 1),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "policies": per_policy,
        "turns": turns_out,
    }


def _print(section: dict[str, Any]) -> None:
    p = section["policies"]

    def row(name: str, fn: Any) -> None:
        print(f"{name:44}" + "".join(f"{fn(p[k])!s:>18}" for k in POLICIES))

    def dist(key: str, stat: str) -> Any:
        return lambda f: f[key][stat]

    print(f"\n{section['mode']}: {section['scripts']} scripts per policy, {section['wall_s']} s")
    print(f"{'':44}" + "".join(f"{k:>18}" for k in POLICIES))
    row(
        "response latency p50 / p95 ms",
        lambda f: f"{f['response_latency_ms']['p50']} / {f['response_latency_ms']['p95']}",
    )
    row("cancel tail, server p99 ms", dist("cancel_tail_server_ms", "p99"))
    row("interruption at client p99 ms", dist("interruption_client_ms", "p99"))
    row(
        "barge-in reaction p50 / p95 ms",
        lambda f: f"{f['barge_in_reaction_ms']['p50']} / {f['barge_in_reaction_ms']['p95']}",
    )
    row(
        "false-interruption resume p50 / max ms",
        lambda f: f"{f['false_interruption_resume_ms']['p50']} / {f['false_interruption_resume_ms']['max']}",
    )
    row("resumed within 1 s / 2 s", lambda f: f"{f['resumed_within_1s']} / {f['resumed_within_2s']}")
    row(
        "false cut-offs (noise + backchannel)",
        lambda f: f"{f['false_cut_offs']} / {f['noise_and_backchannel_bursts_over_agent']}",
    )
    row(
        "premature end of turn (decided / heard)",
        lambda f: f"{f['early_end_of_turn']} / {f['premature_heard']} of {f['pause_scenarios']}",
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["realtime", "virtual", "local"], default="realtime")
    ap.add_argument("--limit", type=int, default=None, help="Scripts per category (default: all).")
    args = ap.parse_args()
    section = asyncio.run(run(args.mode, args.limit))
    _print(section)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "turn_taking.json"
    data = json.loads(out.read_text()) if out.exists() else {}
    data[args.mode] = section
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(
        f"\nwrote {out.relative_to(HERE.parent)} ({args.mode}) and results/turn_taking/figures_{args.mode}.png"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
