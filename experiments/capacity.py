"""Capacity of one ``ah`` process: ramp concurrent real-time voice sessions, level by level.

Run it with ``.venv/bin/python experiments/capacity.py`` (``--levels 1,25,50,100,150 --turns 2``).
Issue 9 point 1: how many sessions one process carries before the ones it has slow down.

Processes, so that the clients' own load can be told apart from the server's:

* the **server**: this file re-run as ``--_serve``: exactly what ``ah run GRAPH`` builds (``load_graph``,
  ``AgentServer``, ``preload``, the uvloop event loop of ``ah run``, ``serve_forever``) plus an
  event-loop lag probe (a 10 ms sleep in a loop; its overshoot), written out at SIGTERM;
* the **fake providers** where the graph needs them (``--fakes``: the Groq and ElevenLabs fakes of
  ``tests/fakes``, latencies as in the cloud benchmark), in a process of their own;
* the **clients** (this process, on uvloop): N conversations streaming 40 ms ``user_audio_chunk``
  messages paced to the wall clock and answering every ``ping`` (``experiments/load_harness.py``'s
  client, as in ``protocol_load.py``). A turn: 1.0 s of loud tone, silence until the reply has been
  heard, 0.5 s more silence.

Per level: response latency p50/p99 (last voiced chunk sent -> first agent audio received,
ARCHITECTURE.md §5), server event-loop lag p99, server CPU (cores, and ms per session-second),
memory per session (peak RSS during the level minus the RSS before the first session, / N), and
errors (``error`` events, failed sessions, turns without a reply). The goal (issue 9): at >= 100
sessions on 2 cores, p99 within 50 ms of the 1-session p99, < 5 MB per session, 0 errors.

Writes ``experiments/results/capacity.json`` and ``capacity.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.fake_providers import FakeSettings, start_fakes, stop_fakes  # noqa: E402
from experiments.load_harness import (  # noqa: E402 - this folder is not a package on sys.path by default
    LagProbe,
    SessionRun,
    StallSampler,
    build_server,
    command_line,
    conversation_url,
    dist,
    graph_label,
    lag_attribution,
    machine_info,
    now,
    proc_cpu_s,
    proc_rss_mb,
    run_clients,
    run_session,
    serve,
    spawn_server,
    speech_chunks,
    stop_server,
    turns_progress,
    watch_peak_rss,
    window,
)

SELF = str(Path(__file__).resolve())
DEFAULT_GRAPH = ROOT / "tests" / "graphs" / "scripted_voice.yaml"
RESULTS = ROOT / "experiments" / "results"
GOAL_SESSIONS, GOAL_P99_DELTA_MS, GOAL_MB_PER_SESSION = 100, 50.0, 5.0


# ---------------------------------------------------------------------------------------------------
# The server process.


def serve_child(
    graph_file: str, stats_file: str, profile_file: str = "", compression: str = "", max_sessions: str = "0"
) -> None:
    import cProfile

    from ah.cli.main import _run_loop

    lag = LagProbe()
    stalls = StallSampler(lag) if os.environ.get("AH_BENCH_STALLS") == "1" else None
    if stalls is not None:
        stalls.start()
    server, agent_id = build_server(
        graph_file, compression=compression == "1", max_sessions=int(max_sessions or 0)
    )
    profiler = cProfile.Profile() if profile_file else None
    try:
        if profiler is not None:
            profiler.enable()
        _run_loop(serve(server, agent_id, lag.run))  # uvloop, as `ah run`
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_file)
        out = {
            "lag": lag.series(),
            "started_sessions": server.started_sessions,
            "failed_sessions": server.failed_sessions,
        }
        if stalls is not None:
            stalls.stop()
            out["stalls"] = stalls.report()
        Path(stats_file).write_text(json.dumps(out))


# ---------------------------------------------------------------------------------------------------
# Levels.


@dataclass
class Level:
    sessions: int
    start: float = 0.0
    end: float = 0.0
    cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    fakes_cpu_s: float = 0.0
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0
    runs: list[SessionRun] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    excess: list[tuple[str, float]] = field(default_factory=list)  # extra attempts: outcome, seconds


async def excess_attempt(url: str) -> tuple[str, float]:
    """A connection past the limit: how it ended ("refused 1013", "admitted", ...) and how long it took
    from the start of the connect to the close frame (or to the metadata, if admitted)."""
    import websockets
    from websockets.exceptions import ConnectionClosed

    t0 = now()
    try:
        async with websockets.connect(url, open_timeout=10) as ws:
            try:
                # The refusal may already be on its way: the send can see the close.
                await ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                    if msg["type"] == "conversation_initiation_metadata":
                        return "admitted", now() - t0
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                return f"refused {code}", now() - t0
    except Exception as exc:
        return f"failed {type(exc).__name__}", now() - t0


def summarise_level(level: Level, lag: dict[str, list[float]], rss_idle_mb: float) -> dict[str, Any]:
    runs = level.runs
    turns = [t for r in runs for t in r.turns]
    latencies = [t.latency_s for t in turns if t.latency_s is not None]
    errors = sum(len(r.errors) for r in runs)
    failures = [r.failure for r in runs if r.failure]
    no_reply = sum(1 for t in turns if t.timed_out or t.first_audio_at is None)
    wall = level.end - level.start
    audio_s = sum(r.closed_at - t0 for r, t0 in zip(runs, level.starts, strict=True))  # session-seconds
    lag_ms = window(lag, level.start, level.end)
    lag_cause = lag_attribution(lag, level.start, level.end) if lag.get("c") else {}
    excess: dict[str, Any] = {}
    if level.excess:
        outcomes: dict[str, int] = {}
        for outcome, _ in level.excess:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        excess = {
            "attempts": len(level.excess),
            "outcomes": outcomes,
            "refusal_ms": dist([d for o, d in level.excess if o == "refused 1013"], 1000, 1),
        }
    return {
        "sessions": level.sessions,
        "excess_connections": excess,
        "wall_s": round(wall, 2),
        "turns": len(turns),
        "response_latency_ms": dist(latencies, 1000, 1),
        # The two halves: last voiced chunk -> user_transcript (VAD, endpoint silence, STT), and
        # user_transcript -> first audio (LLM, TTS, protocol out).
        "transcript_latency_ms": dist(
            [t.transcript_at - t.burst_end for t in turns if t.transcript_at is not None], 1000, 1
        ),
        "reply_after_transcript_ms": dist(
            [
                t.first_audio_at - t.transcript_at
                for t in turns
                if t.first_audio_at is not None and t.transcript_at is not None
            ],
            1000,
            1,
        ),
        "server_event_loop_lag_ms": dist(lag_ms, 1000, 2),
        "server_event_loop_lag_cause": lag_cause,
        "server_cores_used": round(level.cpu_s / wall, 3) if wall else None,
        "server_cpu_ms_per_session_s": round(1000 * level.cpu_s / audio_s, 2) if audio_s else None,
        "client_cores_used": round(level.client_cpu_s / wall, 3) if wall else None,
        "fake_providers_cores_used": round(level.fakes_cpu_s / wall, 3) if wall else None,
        "server_rss_before_mb": round(level.rss_before_mb, 1),
        "server_rss_peak_mb": round(level.rss_peak_mb, 1),
        "mb_per_session": round((level.rss_peak_mb - rss_idle_mb) / level.sessions, 3),
        "errors": errors + len(failures) + no_reply,
        "error_events": errors,
        "failed_sessions": failures[:5],
        "turns_without_reply": no_reply,
    }


async def hammer_excess(url: str, level: Level, rate: float) -> None:
    """While every session of the level is running (from just after the last one started, for 3 s;
    with --turns 2 or more a session outlasts the stagger), open ``rate`` extra connections a
    second: each must be refused at once with 1013."""
    await asyncio.sleep(max(0.0, level.starts[-1] + 0.5 - now()))
    tasks = []
    for _ in range(int(3 * rate)):
        tasks.append(asyncio.create_task(excess_attempt(url)))
        await asyncio.sleep(1 / rate)
    level.excess = list(await asyncio.gather(*tasks))


async def run_levels(args: argparse.Namespace, console: Any, voice: list[bytes] | None) -> dict[str, Any]:
    """``voice``: what each client says in a turn (None: the 1 s tone)."""
    tmp = Path(tempfile.mkdtemp(prefix="ah_capacity_"))
    stats_file, server_log = tmp / "server.json", tmp / "server.log"
    env = {**os.environ, **dict(kv.split("=", 1) for kv in args.env)}
    if args.stalls:
        env["AH_BENCH_STALLS"] = "1"
    if args.turn_metrics:
        env["AH_BENCH_TURN_METRICS"] = str(args.turn_metrics.resolve())
    fakes = None
    if args.fakes:  # the cloud graph's providers, faked in a process of their own
        settings = FakeSettings() if args.provider_spread else FakeSettings().fixed()
        fakes, fake_env = await start_fakes(settings, tmp / "fakes.json")
        env.update(fake_env)
    server, port, agent_id = await spawn_server(
        [SELF, "--_serve", str(args.graph), str(stats_file), str(args.profile or ""),
         "1" if args.compression else "0", str(args.admission)],
        server_log, start_timeout_s=120, env=env,
    )  # fmt: skip
    url = conversation_url(port, agent_id)
    if args.load_nice:  # the stand-ins for remote parties yield the CPU to the server (after it started)
        os.nice(args.load_nice)
        for proc in fakes.procs.values() if fakes is not None else ():
            os.setpriority(
                os.PRIO_PROCESS, proc.pid, os.getpriority(os.PRIO_PROCESS, proc.pid) + args.load_nice
            )
    console.print(f"server pid {server.pid} on port {port} ({agent_id}); clients in pid {os.getpid()}")
    levels: list[Level] = []
    client_lag = LagProbe()
    lag_task = asyncio.get_running_loop().create_task(client_lag.run())
    try:
        warm = await run_session(url, "warmup", 1, now(), lambda: None, voice)
        if warm.failure or not warm.turns or warm.turns[0].timed_out:
            raise SystemExit(f"warm-up session failed: {warm.failure or 'turn timed out'}")
        await asyncio.sleep(1.0)
        rss_idle = proc_rss_mb(server.pid)
        with turns_progress(console) as progress:
            plan = [(n, False) for n in args.levels]
            if args.admission:
                plan.append((args.admission, True))  # the limit, full, with connections beyond it
            for n, over in plan:
                # The 1-session baseline runs 3x the turns (the same mix of replies), so that its p99
                # comes from more than a couple of samples.
                turns = args.turns * 3 if n == 1 else args.turns
                label = f"{n} + excess" if over else f"{n} sessions"
                task = progress.add_task(label, total=n * turns)
                level = Level(n)
                level.rss_before_mb = level.rss_peak_mb = proc_rss_mb(server.pid)
                watcher = asyncio.get_running_loop().create_task(watch_peak_rss(server.pid, level))
                cpu0, ccpu0 = proc_cpu_s(server.pid), time.process_time()
                fcpu0 = fakes.cpu_s() if fakes is not None else 0.0
                level.start = now()
                t0 = level.start + 0.05
                stagger = args.stagger_s / n if n > 1 else 0.0
                level.starts = [t0 + i * stagger for i in range(n)]
                hammer = (
                    asyncio.get_running_loop().create_task(hammer_excess(url, level, args.excess_rate))
                    if over
                    else None
                )
                level.runs = list(
                    await asyncio.gather(
                        *(
                            run_session(
                                url, f"user{i:03d}", turns, level.starts[i],
                                lambda t=task: progress.advance(t), voice,
                            )
                            for i in range(n)
                        )
                    )
                )  # fmt: skip
                if hammer is not None:
                    await hammer
                level.end = now()
                level.cpu_s = proc_cpu_s(server.pid) - cpu0
                level.client_cpu_s = time.process_time() - ccpu0
                level.fakes_cpu_s = fakes.cpu_s() - fcpu0 if fakes is not None else 0.0
                watcher.cancel()
                levels.append(level)
                await asyncio.sleep(args.pause_s)  # the server winds the sessions down between levels
    finally:
        lag_task.cancel()
        fakes_stats = await stop_fakes(fakes) if fakes is not None else {}
        await stop_server(server)
    stats = json.loads(stats_file.read_text()) if stats_file.exists() else {"lag": {"t": [], "d": []}}
    rows = [summarise_level(lv, stats["lag"], rss_idle) for lv in levels]
    for row, lv in zip(rows, levels, strict=True):
        row["over_the_limit"] = bool(lv.excess)
        if fakes_stats:
            row["fake_providers_late_ms"] = fakes_lateness(fakes_stats.get("lateness", []), lv.start, lv.end)
    base = rows[0]["response_latency_ms"].get("p99") if rows else None
    for row in rows:
        p99 = row["response_latency_ms"].get("p99")
        row["p99_minus_1_session_ms"] = round(p99 - base, 1) if p99 is not None and base is not None else None
    client_lag_ms = dist(client_lag.lag, 1000, 2)
    return {
        "levels": rows,
        "server_rss_idle_mb": round(rss_idle, 1),
        "client_event_loop_lag_ms": client_lag_ms,
        "server_sessions": {k: stats.get(k) for k in ("started_sessions", "failed_sessions")},
        "server_stalls": stats.get("stalls"),
        "server_log_tail": server_log.read_text()[-3000:],
    }


def fakes_lateness(lateness: list[tuple[float, str, float]], a: float, b: float) -> dict[str, Any]:
    """How late the fakes' answers were, past the latency they drew, per provider stage: the share of a
    level's latency that is the benchmark's own harness (a Python process per provider, faking it for
    every session), not the server's. ``stt_upload`` is the request's start to its body read: the
    server sending the audio and the fake reading it (when the fake parsed uploads slowly, most of it
    was the fake's)."""
    kinds: dict[str, list[float]] = {}
    for t, kind, late in lateness:
        if a <= t <= b:
            kinds.setdefault(kind, []).append(late)
    return {kind: dist(v, 1000, 1) for kind, v in sorted(kinds.items())}


def verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest level that meets every goal, and whether it reaches GOAL_SESSIONS."""
    ok = [
        r
        for r in rows
        if not r["over_the_limit"]
        and r["errors"] == 0
        and r["mb_per_session"] < GOAL_MB_PER_SESSION
        and (r["p99_minus_1_session_ms"] is not None and r["p99_minus_1_session_ms"] <= GOAL_P99_DELTA_MS)
    ]
    best = max((r["sessions"] for r in ok), default=0)
    out: dict[str, Any] = {"largest_level_meeting_goals": best, "goal_met": best >= GOAL_SESSIONS}
    over = [r for r in rows if r["over_the_limit"]]
    if over:
        o = over[0]
        plain = next((r for r in rows if r["sessions"] == o["sessions"] and not r["over_the_limit"]), None)
        ex = o["excess_connections"]
        out["admission"] = {
            "excess_attempts": ex["attempts"],
            "all_refused_with_1013": ex["outcomes"] == {"refused 1013": ex["attempts"]},
            "refusal_ms_p99": ex["refusal_ms"].get("p99"),
            "running_sessions_p99_ms": o["response_latency_ms"].get("p99"),
            "same_level_without_excess_p99_ms": plain["response_latency_ms"].get("p99") if plain else None,
            "running_sessions_errors": o["errors"],
        }
    return out


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    over = [r for r in rows if r["over_the_limit"]]
    rows = [r for r in rows if not r["over_the_limit"]]
    n = [r["sessions"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(n, [r["response_latency_ms"].get("p50") for r in rows], "o-", label="p50")
    ax.plot(n, [r["response_latency_ms"].get("p99") for r in rows], "s-", label="p99")
    if rows and rows[0]["response_latency_ms"].get("p99") is not None:
        ax.axhline(rows[0]["response_latency_ms"]["p99"] + GOAL_P99_DELTA_MS, ls="--", c="grey",
                   label="goal: 1-session p99 + 50 ms")  # fmt: skip
    for r in over:
        ax.plot([r["sessions"]], [r["response_latency_ms"].get("p99")], "r*", ms=12,
                label=f"p99 at the limit, {r['excess_connections']['attempts']} more refused")  # fmt: skip
    ax.set(xlabel="concurrent sessions", ylabel="response latency (ms)", title="response latency")
    ax.legend()
    ax = axes[1]
    ax.plot(n, [r["server_event_loop_lag_ms"].get("p99") for r in rows], "o-", c="C3", label="lag p99")
    ax.set(xlabel="concurrent sessions", ylabel="ms", title="server event-loop lag p99")
    ax2 = ax.twinx()
    ax2.plot(n, [r["server_cores_used"] for r in rows], "s--", c="C2", label="cores used")
    ax2.set_ylabel("server cores used")
    ax = axes[2]
    ax.plot(n, [r["mb_per_session"] for r in rows], "o-", c="C4")
    ax.axhline(GOAL_MB_PER_SESSION, ls="--", c="grey", label="goal: < 5 MB")
    ax.set(xlabel="concurrent sessions", ylabel="MB per session (peak RSS above idle / N)", title="memory")
    ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(console: Any, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="capacity of one process")
    for col in ("sessions", "p50 ms", "p99 ms", "p99 - 1-session", "lag p99 ms", "server cores",
                "cpu ms / session-s", "MB / session", "errors"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in rows:
        lat = r["response_latency_ms"]
        table.add_row(
            f'{r["sessions"]}{" + excess" if r["over_the_limit"] else ""}', str(lat.get("p50")), str(lat.get("p99")), str(r["p99_minus_1_session_ms"]),
            str(r["server_event_loop_lag_ms"].get("p99")), str(r["server_cores_used"]),
            str(r["server_cpu_ms_per_session_s"]), str(r["mb_per_session"]), str(r["errors"]),
        )  # fmt: skip
    console.print(table)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_serve":
        serve_child(*sys.argv[2:7])
        return
    from rich.console import Console

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1, 25, 50, 100, 150]
    )
    parser.add_argument("--turns", type=int, default=2, help="voice turns per session")
    parser.add_argument("--graph", type=Path, default=DEFAULT_GRAPH, help="graph to serve (a voice graph)")
    parser.add_argument(
        "--stagger-s",
        type=float,
        default=6.0,
        help="sessions of a level start over this long (default: about one turn cycle, so the sessions "
        "are at all phases of a turn, as independent users are, not speaking in lockstep)",
    )
    parser.add_argument("--pause-s", type=float, default=2.0, help="pause between levels")
    parser.add_argument(
        "--fakes",
        action="store_true",
        help="start the fake Groq and ElevenLabs servers and point the server at them (graphs/cloud.yaml)",
    )
    parser.add_argument(
        "--speech",
        type=Path,
        help="a 16 kHz WAV the clients say each turn (default with --fakes: tests/fixtures/audio/user_01.wav; "
        "otherwise a 1 s tone, which the energy VAD of the scripted graph hears)",
    )
    parser.add_argument(
        "--provider-spread",
        action="store_true",
        help="fake providers with their log-normal spread (default: fixed at the medians, so that "
        "what differs between levels is what load adds)",
    )
    parser.add_argument(
        "--load-nice",
        type=int,
        default=10,
        help="niceness added to the clients and the fake providers (default 10; 0: the server's priority). "
        "They stand for remote users and providers: on the server's own cores they should not take CPU "
        "time it would have in production. A client or fake that this starves shows in the figures "
        "(client_event_loop_lag_ms, fake_providers_late_ms), so nothing is hidden",
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server process")
    parser.add_argument(
        "--profile", type=Path, help="diagnosis: cProfile the server process into this file (slows it down)"
    )
    parser.add_argument(
        "--turn-metrics",
        type=Path,
        help="diagnosis: the server writes its per-turn figures (ARCHITECTURE.md §5) here, one JSONL file "
        "per session, to tell the server's stages from the clients' and the fakes' share",
    )
    parser.add_argument(
        "--stalls",
        action="store_true",
        help="diagnosis: sample the server loop's stack while it is over 15 ms late, and time every "
        "gen 1/2 garbage collection (written under server_stalls; its thread slows the server down)",
    )
    parser.add_argument(
        "--compression", action="store_true", help="permessage-deflate on (as `ah run --compression`)"
    )
    parser.add_argument(
        "--admission",
        type=int,
        default=0,
        help="serve with --max-sessions N and add a last level: N sessions, the limit reached, while "
        "--excess-rate more connections a second arrive (each must get 1013 at once)",
    )
    parser.add_argument("--excess-rate", type=float, default=10.0, help="extra connections a second")
    parser.add_argument("--name", default="capacity", help="results file stem under experiments/results/")
    args = parser.parse_args()
    if args.admission and args.turns < 2:
        parser.error("--admission needs --turns 2 or more (the limit must be reached and held)")
    if args.levels[0] != 1:
        args.levels.insert(0, 1)  # the 1-session level is the baseline every other level is compared with
    console = Console()
    if args.speech is None and args.fakes:
        args.speech = ROOT / "tests" / "fixtures" / "audio" / "user_01.wav"
    voice = speech_chunks(args.speech) if args.speech is not None else None
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info()
    t0 = time.monotonic()
    result = run_clients(run_levels(args, console, voice))
    machine["loadavg_end"] = os.getloadavg()
    doc = {
        "benchmark": "capacity",
        "command": command_line(),
        "started_at": started,
        "duration_s": round(time.monotonic() - t0, 1),
        "config": {
            "levels": args.levels,
            "turns": args.turns,
            "graph": graph_label(args.graph),
            "stagger_s": args.stagger_s,
            "compression": args.compression,
            "fakes": (FakeSettings() if args.provider_spread else FakeSettings().fixed()).__dict__
            if args.fakes
            else None,
            "speech": str(args.speech) if args.speech else "1 s tone",
            "admission_limit": args.admission,
            "load_nice": args.load_nice,
            "excess_rate": args.excess_rate,
        },
        "goals": {
            "sessions": GOAL_SESSIONS,
            "p99_minus_1_session_ms": GOAL_P99_DELTA_MS,
            "mb_per_session": GOAL_MB_PER_SESSION,
            "errors": 0,
        },
        "machine": machine,
        **result,
    }
    doc["verdict"] = verdict(result["levels"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{args.name}.json"
    out.write_text(json.dumps(doc, indent=2) + "\n")
    png = RESULTS / f"{args.name}.png"
    plot(result["levels"], png, f"one ah process, {doc['config']['graph']}, {machine['affinity']} cores")
    print_table(console, result["levels"])
    console.print(f"verdict: {doc['verdict']}")
    console.print(f"wrote {out} and {png} in {doc['duration_s']} s")


if __name__ == "__main__":
    main()
