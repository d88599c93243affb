"""Soak: many real-time voice sessions for a long time, with faults mixed in, against one ``ah`` process.

Run it with ``.venv/bin/python experiments/soak.py`` (50 sessions for 30 minutes; ``--minutes 2`` for
a short run). Issue 9 point 6: memory must not grow (< 5 % from the end of the warm-up to the end),
no session may hang, every fault must be answered, and the turn after a fault must be normal.

Sessions churn, as real traffic does: each of ``--sessions`` slots opens a conversation, talks for a
few turns (real-time 40 ms ``user_audio_chunk`` messages, ``pong`` for every ``ping``), closes it and
opens the next, so a long run goes through thousands of sessions and a leak per session shows.

Faults:

* **client disconnects**: with probability ``--abort-rate`` per turn the client drops its TCP
  connection in the middle of a turn (no close frame), as a phone on a train does; the server must
  end that session by itself (its count of running sessions, sampled every second, returns to the
  number of open clients);
* **provider faults** (graphs on cloud providers, with ``--fakes``): the fake Groq and ElevenLabs
  servers of ``tests/fakes`` answer 1 % of requests with a 500 and drop a connection every few
  minutes; each such turn must end in an ``error`` event or a reply (a retry), and the next turn of
  that session must be normal.

The clients' audio, pacing and ``/proc`` readings are ``experiments/load_harness.py``'s, shared with
``protocol_load.py`` and ``capacity.py``.

A turn "hangs" when neither a reply nor an error arrives within ``--turn-timeout-s``. Results go to
``experiments/results/soak.json`` and ``soak.png`` (RSS, running sessions, latency over time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.fake_providers import FakeSettings, start_fakes, stop_fakes  # noqa: E402
from experiments.load_harness import (  # noqa: E402 - this folder is not a package on sys.path by default
    CHUNK_BYTES,
    CHUNK_S,
    Pacer,
    audio_message,
    build_server,
    command_line,
    conversation_url,
    dist,
    graph_label,
    init_message,
    machine_info,
    now,
    pong_message,
    proc_rss_mb,
    run_clients,
    serve,
    spawn_server,
    speech_chunks,
    stop_server,
    tone_chunks,
)

SELF = str(Path(__file__).resolve())
DEFAULT_GRAPH = ROOT / "tests" / "graphs" / "scripted_voice.yaml"
RESULTS = ROOT / "experiments" / "results"
GOAL_GROWTH = 0.05


def serve_child(graph_file: str, stats_file: str) -> None:
    """``ah run GRAPH`` as built by the CLI (uvloop), sampling its running-session count each second."""
    from ah.cli.main import _run_loop

    server, agent_id = build_server(graph_file)
    samples: list[tuple[float, int]] = []

    async def sample() -> None:
        while True:
            samples.append((now(), len(server.sessions)))
            await asyncio.sleep(1.0)

    try:
        _run_loop(serve(server, agent_id, sample))
    finally:
        Path(stats_file).write_text(
            json.dumps(
                {
                    "sessions": samples,
                    "started_sessions": server.started_sessions,
                    "failed_sessions": server.failed_sessions,
                }
            )
        )


# ---------------------------------------------------------------------------------------------------
# Clients.


@dataclass
class Stats:
    sessions: int = 0
    turns: int = 0
    replies: int = 0
    errors: int = 0  # turns answered by an error event
    hung: int = 0
    aborted: int = 0  # client disconnect faults injected
    failed_sessions: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)
    after_fault_turns: int = 0
    after_fault_normal: int = 0
    open_clients: list[tuple[float, int]] = field(default_factory=list)
    error_examples: list[dict[str, Any]] = field(default_factory=list)
    # What each turn after a faulted one that was not normal got: its error events, or none (a turn
    # can be hit by an injected fault of its own; the message tells which).
    after_fault_not_normal: list[list[str]] = field(default_factory=list)


BURST = [audio_message(c) for c in tone_chunks()]
SILENCE = audio_message(bytes(CHUNK_BYTES))


def use_speech(wav: Path) -> None:
    """Turns say the voiced part of ``wav`` (Silero VAD in graphs/cloud.yaml hears speech, not a tone)."""
    global BURST
    BURST = [audio_message(c) for c in speech_chunks(wav)]


async def conversation(
    url: str,
    name: str,
    turns: int,
    args: argparse.Namespace,
    stats: Stats,
    rng: random.Random,
    live: list[int],
    stop_at: float,
) -> None:
    """One session: ``turns`` voice turns, or fewer if this client drops its connection (a fault)."""
    import websockets

    stats.sessions += 1
    async with websockets.connect(url, max_size=1 << 24, open_timeout=10) as ws:
        live[0] += 1
        try:
            await ws.send(init_message(name))
            events: asyncio.Queue[tuple[str, float, dict[str, Any]]] = asyncio.Queue()
            reply_floor, last_audio = [0], [0]  # audio event ids: of earlier replies / the newest seen

            async def receive() -> None:
                async for raw in ws:
                    msg = json.loads(raw)
                    kind = msg["type"]
                    if kind == "ping":
                        await ws.send(pong_message(msg))
                    elif kind == "audio":
                        eid = int(msg["audio_event"]["event_id"])
                        # Only a new reply's audio counts: a previous reply's may still be arriving.
                        if eid > reply_floor[0]:
                            events.put_nowait((kind, now(), msg))
                        last_audio[0] = max(last_audio[0], eid)
                    elif kind == "error":
                        events.put_nowait((kind, now(), msg))

            receiver = asyncio.get_running_loop().create_task(receive())
            send = Pacer(ws).send

            previous_faulted = False
            for _ in range(turns):
                if now() > stop_at:
                    break  # the run is over: no new turn
                if receiver.done():
                    raise RuntimeError("the server closed the connection")
                abort_at = len(BURST) + 5 if rng.random() < args.abort_rate else None
                reply_floor[0] = last_audio[0]
                while not events.empty():
                    events.get_nowait()
                stats.turns += 1
                end = 0.0
                for i, text in enumerate(BURST):
                    end = await send(text)
                    if abort_at is not None and i == abort_at - 1:
                        break
                first_audio: float | None = None
                heard_until = 0.0
                answered_by_error = False
                turn_errors: list[str] = []
                deadline = end + args.turn_timeout_s
                sent_after = 0
                while True:
                    t = await send(SILENCE)
                    sent_after += 1
                    if abort_at is not None and sent_after >= 3:  # mid-turn: the client vanishes
                        stats.aborted += 1
                        ws.transport.abort()
                        receiver.cancel()
                        return
                    while not events.empty():
                        kind, when, msg = events.get_nowait()
                        if kind == "audio":
                            first_audio = first_audio or when
                            heard_until = when
                        elif kind == "error":
                            answered_by_error = True
                            turn_errors.append(str(msg.get("error_event", {}).get("message", "")))
                            if len(stats.error_examples) < 10:
                                stats.error_examples.append(msg.get("error_event", {}))
                    if first_audio is not None and t - heard_until > args.quiet_s:
                        break  # the reply has been heard to its end
                    if answered_by_error and first_audio is None and t - end > 2.0:
                        break
                    if t > deadline:
                        break
                if first_audio is not None:
                    stats.replies += 1
                    stats.latencies.append((end, first_audio - end))
                elif answered_by_error:
                    stats.errors += 1
                else:
                    stats.hung += 1
                if previous_faulted:
                    stats.after_fault_turns += 1
                    normal = first_audio is not None and not answered_by_error
                    stats.after_fault_normal += normal
                    if not normal:
                        stats.after_fault_not_normal.append(turn_errors or ["no reply and no error"])
                previous_faulted = answered_by_error
                for _ in range(int(args.gap_s / CHUNK_S)):
                    await send(SILENCE)
            receiver.cancel()
        finally:
            live[0] -= 1


async def slot(
    url: str, index: int, args: argparse.Namespace, stats: Stats, stop_at: float, live: list[int]
) -> None:
    rng = random.Random(index)
    await asyncio.sleep(index * args.stagger_s / max(1, args.sessions))
    n = 0
    while now() < stop_at:
        n += 1
        try:
            await conversation(url, f"u{index}-{n}", rng.randint(2, 4), args, stats, rng, live, stop_at)
        except Exception as exc:
            stats.failed_sessions.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(1.0)


async def run(args: argparse.Namespace, console: Any) -> dict[str, Any]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    tmp = Path(tempfile.mkdtemp(prefix="ah_soak_"))
    stats_file, server_log = tmp / "server.json", tmp / "server.log"
    env = dict(os.environ)
    fakes = None
    if args.fakes:  # provider faults: 1 % 500s and a dropped connection every few minutes
        settings = FakeSettings(groq_faults=args.groq_faults, tts_faults=args.tts_faults)
        fakes, fake_env = await start_fakes(settings, tmp / "fakes.json")
        env.update(fake_env)
    server, port, agent_id = await spawn_server(
        [SELF, "--_serve", str(args.graph), str(stats_file)], server_log, start_timeout_s=120, env=env
    )
    url = conversation_url(port, agent_id)
    stats = Stats()
    live = [0]
    rss: list[tuple[float, float]] = []
    duration = args.minutes * 60
    t_start = now()
    stop_at = t_start + duration
    try:
        slots = [asyncio.create_task(slot(url, i, args, stats, stop_at, live)) for i in range(args.sessions)]
        with Progress(
            TextColumn("soak"), BarColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console,
        ) as progress:  # fmt: skip
            task = progress.add_task("soak", total=duration, info="")
            while now() < stop_at:
                await asyncio.sleep(1.0)
                t = now()
                rss.append((t - t_start, proc_rss_mb(server.pid)))
                stats.open_clients.append((t - t_start, live[0]))
                progress.update(
                    task,
                    completed=t - t_start,
                    info=f"{stats.sessions} sessions, {stats.turns} turns, RSS {rss[-1][1]:.0f} MB, "
                    f"{stats.errors} error turns, {stats.hung} hung, {stats.aborted} aborts",
                )
        await asyncio.wait_for(asyncio.gather(*slots, return_exceptions=True), args.turn_timeout_s + 30)
        await asyncio.sleep(2.0)  # every client has gone: the server must have no session left
        rss.append((now() - t_start, proc_rss_mb(server.pid)))
    finally:
        injected = await stop_fakes(fakes) if fakes is not None else {}
        await stop_server(server)
    served = json.loads(stats_file.read_text()) if stats_file.exists() else {"sessions": []}
    server_sessions = [(t - t_start, n) for t, n in served["sessions"]]
    result = summarise(args, stats, rss, server_sessions, served, server_log.read_text()[-3000:])
    # How late the loaded fakes answered (stt_upload is the server's own upload time, not the fakes').
    late = [x[2] for x in injected.pop("lateness", []) if x[1] != "stt_upload"]
    result["provider_faults"] = injected
    result["fake_providers_late_ms"] = dist(late, 1000, 1) if late else {}
    return result


def summarise(
    args: argparse.Namespace,
    stats: Stats,
    rss: list[tuple[float, float]],
    server_sessions: list[tuple[float, int]],
    served: dict[str, Any],
    log_tail: str,
) -> dict[str, Any]:
    duration = args.minutes * 60
    warm = min(args.warmup_s, duration / 3)
    after_warm = [m for t, m in rss if warm <= t <= warm + 30]
    last = [m for t, m in rss if t >= duration - 30]
    base = float(np.median(after_warm)) if after_warm else float("nan")
    end = float(np.median(last)) if last else float("nan")
    growth = (end - base) / base if base else float("nan")
    leftover = server_sessions[-1][1] if server_sessions else None
    minute_lat: dict[int, list[float]] = {}
    for t, d in stats.latencies:
        minute_lat.setdefault(int(t // 60), []).append(d)
    return {
        "duration_s": duration,
        "sessions_started": stats.sessions,
        "turns": stats.turns,
        "replies": stats.replies,
        "turns_answered_by_error": stats.errors,
        "hung_turns": stats.hung,
        "client_disconnects_injected": stats.aborted,
        "failed_sessions": len(stats.failed_sessions),
        "failed_session_examples": stats.failed_sessions[:5],
        "error_examples": stats.error_examples,
        "turns_after_a_faulted_turn": stats.after_fault_turns,
        "of_which_normal": stats.after_fault_normal,
        "after_a_fault_not_normal": stats.after_fault_not_normal,
        "response_latency_ms": dist([d for _, d in stats.latencies], 1000, 1),
        "response_latency_p99_ms_per_minute": {
            m: round(float(np.percentile(v, 99)) * 1000, 1) for m, v in sorted(minute_lat.items())
        },
        "rss_mb": {"after_warmup": round(base, 1), "end": round(end, 1), "growth": round(growth, 4)},
        "server_sessions_left_after_clients_gone": leftover,
        "server": {k: served.get(k) for k in ("started_sessions", "failed_sessions")},
        "verdict": {
            "memory_growth_under_5pct": bool(growth < GOAL_GROWTH),
            "no_hung_turn": stats.hung == 0,
            "no_failed_session": not stats.failed_sessions,
            "no_session_left_running": leftover == 0,
            "every_turn_after_a_fault_normal": stats.after_fault_turns == stats.after_fault_normal,
        },
        "series": {
            "rss": rss,
            "server_sessions": server_sessions,
            "open_clients": stats.open_clients,
            "latency": [(round(t, 2), round(d, 4)) for t, d in stats.latencies],
        },
        "server_log_tail": log_tail,
    }


def plot(result: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["series"]
    fig, axes = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True)
    t0 = min((t for t, _ in s["latency"]), default=0.0)
    axes[0].plot([t / 60 for t, _ in s["rss"]], [m for _, m in s["rss"]], c="C0")
    axes[0].axhline(result["rss_mb"]["after_warmup"] * (1 + GOAL_GROWTH), ls="--", c="grey", label="+5 %")
    axes[0].set(ylabel="server RSS (MB)", title=title)
    axes[0].legend()
    axes[1].plot(
        [t / 60 for t, _ in s["server_sessions"]], [n for _, n in s["server_sessions"]], label="server"
    )
    axes[1].plot(
        [t / 60 for t, _ in s["open_clients"]], [n for _, n in s["open_clients"]], ls=":", label="clients"
    )
    axes[1].set(ylabel="running sessions")
    axes[1].legend()
    lat = s["latency"]
    axes[2].scatter([(t - t0) / 60 for t, _ in lat], [d * 1000 for _, d in lat], s=3, alpha=0.4)
    axes[2].set(xlabel="minutes", ylabel="response latency (ms)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_serve":
        serve_child(sys.argv[2], sys.argv[3])
        return
    from rich.console import Console

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=50, help="concurrent conversations")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--graph", type=Path, default=DEFAULT_GRAPH)
    parser.add_argument("--abort-rate", type=float, default=0.01, help="turns cut by a client disconnect")
    parser.add_argument(
        "--turn-timeout-s", type=float, default=20.0, help="a turn with no answer by then hangs"
    )
    parser.add_argument("--quiet-s", type=float, default=0.5, help="a reply has ended after this much quiet")
    parser.add_argument("--gap-s", type=float, default=0.5, help="silence after a turn")
    parser.add_argument("--stagger-s", type=float, default=5.0, help="the slots start over this long")
    parser.add_argument(
        "--warmup-s", type=float, default=120.0, help="memory baseline: this long after start"
    )
    parser.add_argument(
        "--fakes",
        action="store_true",
        help="start the fake Groq and ElevenLabs servers with faults and point the server at them "
        "(use with --graph graphs/cloud.yaml)",
    )
    # ~375 turns a minute at 50 sessions, ~3 provider requests a turn: 0.001 is a drop every few minutes.
    parser.add_argument("--groq-faults", default="500=0.01,disconnect=0.001")
    parser.add_argument("--tts-faults", default="disconnect=0.001")
    parser.add_argument(
        "--speech",
        type=Path,
        help="16 kHz WAV each turn says (default with --fakes: tests/fixtures/audio/user_01.wav; else a tone)",
    )
    parser.add_argument("--name", default="soak")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON and the plot go")
    args = parser.parse_args()
    console = Console()
    if args.speech is None and args.fakes:
        args.speech = ROOT / "tests" / "fixtures" / "audio" / "user_01.wav"
    if args.speech is not None:
        use_speech(args.speech)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = machine_info()
    t0 = time.monotonic()
    result = run_clients(run(args, console))
    machine["loadavg_end"] = os.getloadavg()
    doc = {
        "benchmark": "soak",
        "command": command_line(),
        "started_at": started,
        "wall_s": round(time.monotonic() - t0, 1),
        "config": {
            "sessions": args.sessions,
            "minutes": args.minutes,
            "graph": graph_label(args.graph),
            "abort_rate": args.abort_rate,
            "turn_timeout_s": args.turn_timeout_s,
            "fakes": {"groq_faults": args.groq_faults, "tts_faults": args.tts_faults} if args.fakes else None,
        },
        "machine": machine,
        **result,
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out, png = args.out_dir / f"{args.name}.json", args.out_dir / f"{args.name}.png"
    plot(result, png, f"soak: {args.sessions} sessions, {args.minutes:g} min, {doc['config']['graph']}")
    # The plot has every point; the JSON keeps per-minute latency p99s and the series every 5 s.
    doc["series"] = {
        k: [[round(t, 1), round(x, 1)] for t, x in v[::5]]
        for k, v in result["series"].items()
        if k != "latency"
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    keys = ("sessions_started", "turns", "replies", "turns_answered_by_error", "hung_turns",
            "client_disconnects_injected", "failed_sessions", "response_latency_ms", "rss_mb",
            "server_sessions_left_after_clients_gone", "provider_faults", "verdict")  # fmt: skip
    for k in keys:
        console.print(f"{k}: {result[k]}", markup=False)
    console.print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
