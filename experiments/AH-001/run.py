"""AH-001: turn policies compared on the conversation corpus — silence vs overlap_aware.

    .venv/bin/python experiments/AH-001/run.py              # virtual clock: exact, ~30 s
    .venv/bin/python experiments/AH-001/run.py --realtime   # real server, real protocol, real time

Plays every script of ``experiments/conversations/`` through ``silence.yaml`` (A) and
``overlap_aware.yaml`` (B) (in real time: ``realtime/*.yaml``, Whisper tiny.en as the STT) with ``ah ab``'s own code (``ah.ab``: the simulator, paired bootstrap
intervals, the report) and writes, under ``experiments/AH-001/`` (``--realtime``: ``…/realtime/``):

* ``report/report.md``, ``report/report.html`` and the plots: the A/B report;
* ``qa/metrics.json``: every figure's comparison and every turn's figures, per variant;
* ``qa/transcript_raw.txt``: what was said and done in each conversation, per variant, as the client
  received it (user transcripts, agent responses, interruptions, corrections), time-stamped.

``smart_turn`` joins as a third variant when its node type is installed (``turn_policy.smart_turn``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ah.ab.report import Report, write
from ah.ab.run import play_ab
from ah.ab.stats import compare
from ah.runtime.graph_loader import load_graph
from ah.runtime.registry import default_registry
from ah.sim import ScenarioResult, load_scenario

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parents[0] / "conversations"


def transcript(result: ScenarioResult, side: str) -> list[str]:
    tl = result.timeline
    lines = [f"== {result.scenario.scenario} ({result.scenario.category}) on {side}: {result.graph}"]
    if not result.ok:
        lines.append(f"   FAILED: {result.error}")
    for t, kind, msg in tl.messages:
        at = f"{t - tl.t0:7.3f}s"
        if kind == "user_transcript":
            lines.append(f"{at} user:   {msg.get('user_transcript')}")
        elif kind == "agent_response":
            lines.append(f"{at} agent:  {msg.get('agent_response')}")
        elif kind == "interruption":
            lines.append(f"{at} [interruption of reply {msg.get('event_id')}]")
        elif kind == "agent_response_correction":
            lines.append(f"{at} [heard only: {msg.get('corrected_agent_response')!r}]")
    for step in result.scenario.steps:
        lines.append(f"         script: {step.role:<11} {step.after}+{step.delay_ms}ms  {step.text!r}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--realtime", action="store_true", help="real server, real protocol, real time")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--tail-ms",
        type=int,
        default=None,
        help="how long the simulated user waits, after the last step and the agent's last sound, before "
        "hanging up (default: each script's own tail_ms, 1500 ms; --realtime: 4000 ms, since a Whisper "
        "reply can take more than 1.5 s to start and the conversation would end before it)",
    )
    ap.add_argument(
        "--only", action="append", help="compare silence only with these variants (overlap_aware, smart_turn)"
    )
    args = ap.parse_args()
    out = HERE / "realtime" if args.realtime else HERE
    files = sorted(CORPUS.glob("*.yaml"))
    scenarios = [load_scenario(f) for f in files]
    tail_ms = args.tail_ms if args.tail_ms is not None else (4000 if args.realtime else None)
    if tail_ms is not None:
        for sc in scenarios:
            sc.tail_ms = tail_ms
    # Real time uses Whisper for STT (realtime/base.yaml): the scripted STT knows the script's lines
    # only on the virtual clock, and what a real recogniser makes of a cough is part of the test.
    where = HERE / "realtime" if args.realtime else HERE
    variants = [where / "silence.yaml", where / "overlap_aware.yaml"]
    if "turn_policy.smart_turn" in default_registry().names() and (where / "smart_turn.yaml").exists():
        variants.append(where / "smart_turn.yaml")
    if args.only:
        variants = [variants[0], *(v for v in variants[1:] if v.stem in args.only)]
    graphs = [load_graph(v) for v in variants]
    a = graphs[0]
    texts: list[str] = []
    all_metrics: dict[str, Any] = {
        "mode": "realtime" if args.realtime else "virtual",
        "tail_ms": tail_ms,
        "comparisons": {},
    }
    old = out / "qa" / "metrics.json"
    if args.only and old.exists():  # a partial run adds to what is there
        all_metrics["comparisons"] = json.loads(old.read_text()).get("comparisons", {})
    t0 = time.monotonic()
    for b in graphs[1:]:
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        ) as bar:
            task = bar.add_task(f"{a.name} vs {b.name}", total=2 * len(scenarios) * args.repeats)

            def done(side: str, r: ScenarioResult, task: Any = task) -> None:
                texts.extend(transcript(r, side))
                bar.update(task, advance=1, description=f"{side} {r.scenario.scenario}")

            pa, pb = asyncio.run(
                play_ab(a, b, scenarios, repeats=args.repeats, virtual=not args.realtime, on_result=done)
            )
        comparisons = compare(pa.samples, pb.samples)
        report = Report(
            a.name, b.name, str(variants[0].relative_to(HERE.parents[1])),
            str(variants[graphs.index(b)].relative_to(HERE.parents[1])), "experiments/conversations",
            args.repeats, "real time, real server, ElevenLabs protocol" if args.realtime else "virtual clock",
            len(scenarios), comparisons, pa.samples, pb.samples,
            failures=[f"A: {f}" for f in pa.failures] + [f"B: {f}" for f in pb.failures],
        )  # fmt: skip
        write(report, out / f"report_{variants[graphs.index(b)].stem}")
        all_metrics["comparisons"][f"{a.name}_vs_{b.name}"] = report.to_json()
    all_metrics["wall_s"] = round(time.monotonic() - t0, 1)
    (out / "qa").mkdir(parents=True, exist_ok=True)
    (out / "qa" / "metrics.json").write_text(json.dumps(all_metrics, indent=1))
    mode = "a" if args.only else "w"
    with (out / "qa" / "transcript_raw.txt").open(mode) as fh:
        fh.write("\n".join(texts) + "\n")
    for name, data in all_metrics["comparisons"].items():
        print(name)
        for f in data["figures"]:
            d = f["diff_mean"]
            if d is not None:
                print(f"  {f['figure']:<24} A {f['A']['mean']}  B {f['B']['mean']}  B-A {d['estimate']} "
                      f"[{d['low']}, {d['high']}]  n={f['n_pairs']}  {f['verdict']}")  # fmt: skip
    print(f"wrote {out / 'qa'} and the report in {all_metrics['wall_s']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
