"""Telemetry overhead: tracing + metrics on vs off — added response latency and CPU per turn.

    .venv/bin/python experiments/telemetry_overhead.py            # ~3 min
    .venv/bin/python experiments/telemetry_overhead.py --quick    # ~40 s, for a look

"On" is everything at once: a trace per turn exported over OTLP/HTTP (the official exporter, to a
receiver in another process) and to a JSONL file, per-turn metrics files, and Prometheus histograms.
"Off" is a server with no telemetry at all (no turn tracker: no port is tapped). Two parts:

1. **Micro, exact.** A :class:`~ah.telemetry.turns.TurnTracker` attached to a real session of
   ``experiments/AH-001/base.yaml`` is fed the frames of a typical voice turn (VAD scores, start and
   end, a transcript, the committed turn, 40 reply text deltas, 150 agent audio chunks, the scope
   finishing) in a tight loop. It reports the cost of one tapped frame, of the frames on the critical
   path of a turn (end of speech -> first agent audio: what could delay the response), and of
   finishing a turn (making its 8 spans, the metrics line, the histograms), which runs after the reply
   has been heard (``loop.call_soon``), off the response path.
2. **Macro, end to end.** The corpus's clean conversations played in real time over the real server
   and protocol by the conversation simulator, in alternating blocks: off, on, off, on, ... Per turn:
   the response latency as the client measures it (paired by ``scenario#step``, B - A with a paired
   bootstrap interval from ``ah.ab.stats``) and the process's CPU time per turn in each condition.

Goal (issue 8): under 1 ms of added response latency, under 2 % CPU. Writes
``experiments/results/telemetry_overhead.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ah.ab.stats import paired_interval
from ah.runtime.frames import ReplyTextFrame, SpeechFrame, TranscriptFrame, UserTurnFrame, VadFrame
from ah.runtime.graph_loader import load_graph
from ah.runtime.session import Session
from ah.server.app import AgentServer, ServerConfig
from ah.sim import load_scenario, simulate_realtime
from ah.telemetry.config import MetricsConfig, TelemetryConfig, TracesConfig
from ah.telemetry.hub import Telemetry

ROOT = Path(__file__).resolve().parents[1]
GRAPH = ROOT / "experiments" / "AH-001" / "base.yaml"
CORPUS = ROOT / "experiments" / "conversations"
RESULTS = ROOT / "experiments" / "results" / "telemetry_overhead.json"

RECEIVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"""


def telemetry_on(tmp: Path, otlp_url: str) -> Telemetry:
    return Telemetry(
        TelemetryConfig(
            traces=TracesConfig(
                exporters=["otlp", "jsonl"], otlp_endpoint=otlp_url, jsonl_path=tmp / "traces.jsonl"
            ),
            metrics=MetricsConfig(jsonl_dir=tmp / "metrics", prometheus=True),
        )
    )


def telemetry_off() -> Telemetry:
    return Telemetry(TelemetryConfig(metrics=MetricsConfig(prometheus=False)))


# -- 1. micro ----------------------------------------------------------------------------------------------
def micro(telemetry: Telemetry, turns: int) -> dict[str, float]:
    graph = load_graph(GRAPH)
    tracker = telemetry.observer()
    assert tracker is not None
    session = Session(graph, attachments={"connection": None}, observers=[tracker])
    specs = {(nid, p): graph.nodes[nid].cls.outputs[p] for nid, p in
             [("vad", "events"), ("stt", "transcripts"), ("turn", "turns"), ("llm", "text"), ("tts", "speech")]}  # fmt: skip
    taps = {k: tracker.tap(k[0], graph.nodes[k[0]].type_name, spec) for k, spec in specs.items()}
    vad, stt, turn, llm, tts = (taps[k] for k in specs)
    assert vad and stt and turn and llm and tts
    pcm = bytes(640 * 5)  # 100 ms chunks
    critical: list[float] = []
    finish: list[float] = []
    whole: list[float] = []
    n_frames = 0
    for i in range(turns):
        t0 = time.perf_counter()
        vad(VadFrame("start", i * 10.0, 0.9, confirmed_at=i * 10.0 + 0.06))
        for k in range(30):
            vad(VadFrame("score", i * 10.0 + k * 0.032, 0.9))
        tc = time.perf_counter()
        vad(VadFrame("end", i * 10.0 + 1.0, 0.1, confirmed_at=i * 10.0 + 1.16))
        stt(TranscriptFrame("what is the weather like today", True, 0.9, 0.0, 1.0))
        scope = session.scopes.open("reply")
        turn(UserTurnFrame("what is the weather like today", scope=scope))
        llm(ReplyTextFrame("", kind="start", scope=scope))
        llm(ReplyTextFrame("The ", kind="delta", scope=scope))
        tts(SpeechFrame(pcm, scope=scope))
        critical.append(time.perf_counter() - tc)
        tracker.on_event(session_event("reply_audio_started", scope))
        for _ in range(40):
            llm(ReplyTextFrame("word ", kind="delta", scope=scope))
        llm(ReplyTextFrame("The weather ...", kind="stop", scope=scope))
        for _ in range(150):
            tts(SpeechFrame(pcm, scope=scope))
        tf = time.perf_counter()
        session.scopes.finish(scope)  # no running loop here: the tracker flushes at once
        finish.append(time.perf_counter() - tf)
        whole.append(time.perf_counter() - t0)
        n_frames = 31 + 5 + 42 + 150
    telemetry.flush()
    return {
        "turns": turns,
        "frames_per_turn": n_frames,
        "per_frame_us": round(_per_frame(whole, finish, n_frames), 3),
        "critical_path_us_p50": round(float(np.percentile(critical, 50)) * 1e6, 2),
        "critical_path_us_p99": round(float(np.percentile(critical, 99)) * 1e6, 2),
        "finish_turn_us_p50": round(float(np.percentile(finish, 50)) * 1e6, 1),
        "finish_turn_us_p99": round(float(np.percentile(finish, 99)) * 1e6, 1),
        "whole_turn_us_p50": round(float(np.percentile(whole, 50)) * 1e6, 1),
    }


def _per_frame(whole: list[float], finish: list[float], n: int) -> float:
    taps = [w - f for w, f in zip(whole, finish, strict=True)]
    return float(np.median(taps)) / n * 1e6


def session_event(kind: str, scope: int) -> Any:
    from ah.runtime.node import SessionEvent

    return SessionEvent(kind, "out", {"scope": scope})


# -- 2. macro ----------------------------------------------------------------------------------------------
class LoopCpu:
    """CPU time spent inside the turn tracker on the event loop (frame taps, events, scope changes,
    finishing turns), measured by wrapping its entry points in this process only (the benchmark's own
    instrumentation; nothing in ``ah`` changes)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.per_call_overhead = 0.0

    def calibrate(self) -> None:
        """What the wrapper itself costs a call (two thread_time() reads): subtracted from the total."""

        def nothing() -> None:
            pass

        f = self._timed(nothing)
        n = 20000
        t0 = time.thread_time()
        for _ in range(n):
            f()
        self.per_call_overhead = (time.thread_time() - t0) / n
        self.seconds, self.calls = 0.0, 0

    @property
    def net_seconds(self) -> float:
        return max(0.0, self.seconds - self.calls * self.per_call_overhead)

    def _timed(self, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.thread_time() - t0
                self.calls += 1

        return wrapper

    def install(self) -> None:
        from ah.telemetry.turns import TurnTracker

        timed = self._timed
        self.calibrate()
        tap = TurnTracker.tap

        def tap_timed(tracker: Any, *args: Any) -> Any:
            cb = tap(tracker, *args)
            return timed(cb) if cb is not None else None

        TurnTracker.tap = tap_timed  # type: ignore[method-assign]
        for name in ("on_event", "_on_scope", "_flush"):
            setattr(TurnTracker, name, timed(getattr(TurnTracker, name)))


def thread_cpu(prefix: str) -> float:
    """CPU seconds of this process's threads whose name starts with ``prefix`` (the span exporters)."""
    import os
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        if not names.get(int(tid), "").startswith(prefix):
            continue
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def macro(tmp: Path, otlp_url: str, blocks: int, scenarios: list[Path]) -> dict[str, Any]:
    graph = load_graph(GRAPH)
    scs = [load_scenario(p) for p in scenarios]
    loop_cpu = LoopCpu()
    loop_cpu.install()
    exporter0 = thread_cpu("OtelBatch")
    servers = {}
    for name, tel in (("off", telemetry_off()), ("on", telemetry_on(tmp, otlp_url))):
        server = AgentServer({graph.name: graph}, ServerConfig(port=0), telemetry=tel)
        await server.preload()
        await server.start()
        servers[name] = server
    latency: dict[str, dict[str, list[float]]] = {"off": {}, "on": {}}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    turns: dict[str, int] = {"off": 0, "on": 0}
    wall: dict[str, float] = {"off": 0.0, "on": 0.0}
    try:
        for b in range(blocks):
            for name in ("off", "on") if b % 2 == 0 else ("on", "off"):
                c0, w0 = time.process_time(), time.monotonic()
                n = 0
                for sc in scs:
                    r = await simulate_realtime(graph, sc, servers[name])
                    for t in r.turns:
                        if t.response_latency_ms is not None:
                            latency[name].setdefault(t.key, []).append(t.response_latency_ms)
                            n += 1
                cpu[name].append((time.process_time() - c0) / max(n, 1))
                turns[name] += n
                wall[name] += time.monotonic() - w0
                print(
                    f"block {b + 1}/{blocks} {name:>3}: {n} turns, CPU {cpu[name][-1] * 1000:.1f} ms/turn",
                    file=sys.stderr,
                )
        servers["on"].telemetry.flush()
        exporter_s = thread_cpu("OtelBatch") - exporter0
    finally:
        for s in servers.values():
            await s.drain(1.0)
    keys = sorted(set(latency["off"]) & set(latency["on"]))
    a = np.array([np.mean(latency["off"][k]) for k in keys])
    b = np.array([np.mean(latency["on"][k]) for k in keys])
    diff = paired_interval(a, b)
    cpu_off, cpu_on = float(np.mean(cpu["off"])), float(np.mean(cpu["on"]))
    return {
        "scenarios": [p.name for p in scenarios],
        "blocks": blocks,
        "turns": turns,
        "paired_turns": len(keys),
        "latency_ms_off": {"mean": round(float(a.mean()), 2), "p50": round(float(np.median(a)), 2)},
        "latency_ms_on": {"mean": round(float(b.mean()), 2), "p50": round(float(np.median(b)), 2)},
        "added_latency_ms": diff.to_json() if diff else None,
        "cpu_ms_per_turn_off": round(cpu_off * 1000, 2),
        "cpu_ms_per_turn_on": round(cpu_on * 1000, 2),
        "added_cpu_ms_per_turn": round((cpu_on - cpu_off) * 1000, 2),
        "added_cpu_pct_of_off": round((cpu_on - cpu_off) / cpu_off * 100, 2) if cpu_off else None,
        "cpu_per_block_ms": {k: [round(x * 1000, 2) for x in v] for k, v in cpu.items()},
        # Measured inside: what the telemetry itself costs, without the run-to-run noise of the above.
        "tracker_loop_cpu_ms_per_turn": round(loop_cpu.net_seconds / max(turns["on"], 1) * 1000, 3),
        "tracker_calls_per_turn": round(loop_cpu.calls / max(turns["on"], 1), 1),
        "timing_wrapper_us_per_call_subtracted": round(loop_cpu.per_call_overhead * 1e6, 3),
        "exporter_threads_cpu_ms_per_turn": round(exporter_s / max(turns["on"], 1) * 1000, 3),
        "tracker_plus_exporters_pct_of_off": round(
            (loop_cpu.net_seconds + exporter_s) / max(turns["on"], 1) / cpu_off * 100, 3
        )
        if cpu_off
        else None,
        "spans_exported": sum(1 for _ in (tmp / "traces.jsonl").open())
        if (tmp / "traces.jsonl").exists()
        else 0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer turns and blocks")
    args = ap.parse_args()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        otlp_url = f"http://127.0.0.1:{receiver.stdout.readline().strip()}/v1/traces"
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            turns = 300 if args.quick else 2000
            tel = telemetry_on(tmp / "micro", otlp_url)
            m_on = micro(tel, turns)
            tel.shutdown()  # its exporter threads end: the macro part counts only its own
            print(f"micro, on: {m_on}", file=sys.stderr)
            scenarios = sorted(CORPUS.glob("clean_*.yaml"))[: 3 if args.quick else 7]
            blocks = 2 if args.quick else 4
            m = asyncio.run(macro(tmp, otlp_url, blocks, scenarios))
    finally:
        receiver.terminate()
    result = {
        "what": "telemetry (OTLP + JSONL traces, per-turn metrics files, Prometheus) on vs off",
        "goal": {"added_latency_ms": "< 1", "added_cpu_pct": "< 2"},
        "micro": m_on,
        "macro": m,
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python experiments/telemetry_overhead.py" + (" --quick" if args.quick else ""),
    }  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(f"\nper tapped frame: {m_on['per_frame_us']} µs; critical path of a turn (end of speech -> first audio): "
          f"p50 {m_on['critical_path_us_p50']} µs, p99 {m_on['critical_path_us_p99']} µs; finishing a turn "
          f"(8 spans, metrics line, histograms; after the reply): p50 {m_on['finish_turn_us_p50']} µs")  # fmt: skip
    d = m["added_latency_ms"]
    print(f"end to end, {m['paired_turns']} paired turns: response latency off {m['latency_ms_off']['mean']} ms, "
          f"on {m['latency_ms_on']['mean']} ms, added {d['estimate']} ms [95% CI {d['low']}, {d['high']}]")  # fmt: skip
    print(f"CPU per turn (whole process, client included): off {m['cpu_ms_per_turn_off']} ms, on "
          f"{m['cpu_ms_per_turn_on']} ms: added {m['added_cpu_ms_per_turn']} ms ({m['added_cpu_pct_of_off']} %)")  # fmt: skip
    print(f"measured inside: tracker on the loop {m['tracker_loop_cpu_ms_per_turn']} ms/turn, span exporter "
          f"threads {m['exporter_threads_cpu_ms_per_turn']} ms/turn: {m['tracker_plus_exporters_pct_of_off']} % of "
          f"the process's CPU per turn")  # fmt: skip
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
