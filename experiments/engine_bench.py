"""Engine benchmark: the runtime's own cost per hop, under a burst, and on cancel, beside Pipecat.

Run it with ``make bench`` (or ``.venv-bench/bin/python experiments/engine_bench.py``). It measures,
with 20 ms PCM frames (640 bytes, 16 kHz mono PCM16), side by side in one run and under both the
default asyncio loop and uvloop:

(a) per-hop latency with one frame in flight, through 0, 10 and 20 passthrough nodes between a
    source and a sink: (sink receive - source send) / hops, where hops = nodes + 1 edges (with 0
    nodes: the source->sink time itself);
(b) a burst of 5,000 frames sent as fast as the pipeline accepts them through 10 passthrough nodes:
    per-frame latency (sink receive - the moment the source called send), peak memory (tracemalloc,
    in a separate run so that tracing does not slow the latency runs), and frames lost;
(c) for ``ah`` only: ~1,000 frames of one scope queued across 10 hops, then ``scopes.cancel``:
    the purge itself, the time until no frame of that scope is left anywhere, and the time until
    the next scope's first frame reaches the sink.

``ah`` is driven only through its public surface: a YAML graph of ``util.passthrough`` nodes between
a source and a sink defined here with the node SDK, loaded with ``load_graph`` and run as a
``Session``. Pipecat gets the equivalent: a ``Pipeline`` of passthrough ``FrameProcessor`` s between
a source and a sink, run by a ``PipelineWorker`` in a ``WorkerRunner`` with idle timeout, metrics,
RTVI, turn tracking and signal handling off. Nothing of Pipecat's is copied here; it is imported.

Results go to ``experiments/results/engine.json``; the table on stdout shows ratios and goals.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc
from array import array
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

# Pipecat logs through loguru at DEBUG by default; keep its banner and debug lines off the table.
os.environ.setdefault("LOGURU_LEVEL", "WARNING")

import numpy as np
import uvloop
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ah.runtime.graph_loader import Graph, load_graph
from ah.runtime.registry import NodeRegistry
from ah.runtime.sdk import AudioFrame, EndOfStream, Frame, Input, Node, Output, Params, ScopeRegistry
from ah.runtime.session import Session

FRAME_BYTES = 640  # 20 ms of 16 kHz mono PCM16
SAMPLE_RATE = 16000
ns = time.perf_counter_ns
RESULTS = Path(__file__).resolve().parent / "results" / "engine.json"

# Goals (issue 3, point 7).
GOAL_HOP_RATIO = 0.25  # ah per-hop p50 <= 1/4 of Pipecat's, same run
GOAL_BURST_P50_MS = 5.0
GOAL_PURGE_MS = 1.0

Send = Callable[[Any], Awaitable[None]]
MakeFrame = Callable[[int, int], Any]  # (seq, scope) -> frame


# ---------------------------------------------------------------------------------------------------
# What both engines share: the probe at the sink and the drivers at the source.


class Probe:
    """Send and receive timestamps by frame sequence number, in preallocated arrays (no allocation
    per frame, so tracemalloc sees the engine's memory, not the benchmark's)."""

    __slots__ = ("gate", "received", "t_recv", "t_send", "target", "waiter")

    def __init__(self, n: int, *, gated: bool = False) -> None:
        self.t_send = array("q", bytes(8 * n))
        self.t_recv = array("q", bytes(8 * n))
        self.received = 0
        self.target = 0
        self.waiter: asyncio.Future[None] | None = None
        # Cancel scenario: the sink takes one frame per gate.set(), so frames queue behind it.
        self.gate: asyncio.Event | None = asyncio.Event() if gated else None

    def arrived(self, seq: int) -> None:
        self.t_recv[seq] = ns()
        self.received += 1
        w = self.waiter
        if w is not None and self.received >= self.target and not w.done():
            w.set_result(None)

    def expect(self, total: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.target = total
        self.waiter = fut
        if self.received >= total:
            fut.set_result(None)
        return fut


async def drive_one_in_flight(send: Send, make: MakeFrame, probe: Probe, n: int) -> None:
    """Send a frame, wait until the sink has it, send the next."""
    t_send = probe.t_send
    for i in range(n):
        frame = make(i, 0)
        arrival = probe.expect(probe.received + 1)
        t_send[i] = ns()
        await send(frame)
        await arrival


async def drive_burst(send: Send, make: MakeFrame, probe: Probe, n: int, wait_s: float) -> None:
    """Send ``n`` frames as fast as the pipeline accepts them; then wait for the sink (bounded)."""
    t_send = probe.t_send
    for i in range(n):
        frame = make(i, 0)
        t_send[i] = ns()
        await send(frame)
    try:
        await asyncio.wait_for(probe.expect(n), wait_s)
    except TimeoutError:
        pass  # counted as lost


def latencies_ns(probe: Probe, start: int, stop: int) -> np.ndarray:
    s = np.frombuffer(probe.t_send, dtype=np.int64)[start:stop]
    r = np.frombuffer(probe.t_recv, dtype=np.int64)[start:stop]
    ok = r > 0
    return (r[ok] - s[ok]).astype(np.float64)


def pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


# ---------------------------------------------------------------------------------------------------
# ah: source and sink nodes for the benchmark, registered beside the built-in util.passthrough.


@dataclass(slots=True)
class StampedAudio(AudioFrame):
    """An audio frame with a sequence number: the index of its timestamps in the probe."""

    seq: int = 0


class Bench:
    """What a session's benchmark nodes share, handed to them as the ``bench`` attachment."""

    def __init__(self, probe: Probe, drive: Callable[[Send, ScopeRegistry], Coroutine[Any, Any, None]]):
        self.probe = probe
        self.drive = drive


class BenchSource(Node[Params]):
    """Runs the benchmark's driver; ends (closing the graph) when the driver returns."""

    out = Output(AudioFrame)

    async def run(self) -> None:
        bench: Bench = self.ctx.attachments["bench"]
        await bench.drive(self.out.send, self.ctx.scopes)


class BenchSink(Node[Params]):
    """Stamps every frame's arrival; when gated, takes one frame per opening of the gate."""

    inp = Input(Frame)

    async def run(self) -> None:
        probe: Probe = self.ctx.attachments["bench"].probe
        arrived = probe.arrived
        gate = probe.gate
        if gate is None:
            async for frame in self.inp:
                arrived(frame.seq)  # type: ignore[attr-defined]
            return
        recv = self.inp.recv
        while True:
            await gate.wait()
            gate.clear()
            try:
                frame = await recv()
            except EndOfStream:
                return
            arrived(frame.seq)  # type: ignore[attr-defined]


def ah_registry() -> NodeRegistry:
    reg = NodeRegistry.from_entry_points()
    reg.register("bench.source", BenchSource)
    reg.register("bench.sink", BenchSink)
    return reg


def ah_graph(registry: NodeRegistry, nodes: int, capacity: int = 32, policy: str = "block") -> Graph:
    ids = ["src", *[f"p{i}" for i in range(1, nodes + 1)], "sink"]
    lines = [f"graph: engine_bench_{nodes}_{capacity}", "nodes:", "  src: {type: bench.source}"]
    lines += [f"  p{i}: {{type: util.passthrough}}" for i in range(1, nodes + 1)]
    lines += ["  sink: {type: bench.sink}", "edges:"]
    for a, b in itertools.pairwise(ids):
        src = "src.out" if a == "src" else f"{a}.out"
        dst = "sink.inp" if b == "sink" else f"{b}.inp"
        lines.append(f'  - {{edge: "{src} -> {dst}", capacity: {capacity}, policy: {policy}}}')
    text = "\n".join(lines) + "\n"
    return load_graph(Path(f"experiments/engine_bench_{nodes}.yaml"), registry, text=text)


def ah_make(seq: int, scope: int) -> StampedAudio:
    return StampedAudio(bytes(FRAME_BYTES), SAMPLE_RATE, scope=scope, seq=seq)


async def ah_run(graph: Graph, bench: Bench) -> Session:
    session = Session(graph, attachments={"bench": bench})
    result = await session.run()
    if not result.ok:
        raise RuntimeError(f"ah session failed: {result.failure}")
    return session


# ---------------------------------------------------------------------------------------------------
# Pipecat: the equivalent pipeline, built from its installed package.


_PC: dict[str, Any] = {}


def pipecat_classes() -> dict[str, Any]:
    """Import Pipecat lazily (it takes a second or two) and define the benchmark's processors."""
    if _PC:
        return _PC
    from loguru import logger

    logger.remove()  # no handler: Pipecat's per-frame trace/debug calls return at once
    from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    @dataclass
    class StampedOut(OutputAudioRawFrame):  # a DataFrame: ordered, through both of a processor's queues
        seq: int = 0

    @dataclass
    class StampedIn(InputAudioRawFrame):  # a SystemFrame: Pipecat's fast path (one queue a processor)
        seq: int = 0

    stamped = (StampedOut, StampedIn)

    class Passthrough(FrameProcessor):
        async def process_frame(self, frame: Any, direction: Any) -> None:
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)

    class Source(Passthrough):
        """The benchmark pushes from outside, as a transport's input task does."""

    class Sink(FrameProcessor):
        def __init__(self, probe: Probe) -> None:
            super().__init__()
            self.probe = probe

        async def process_frame(self, frame: Any, direction: Any) -> None:
            if isinstance(frame, stamped):
                self.probe.arrived(frame.seq)
                return
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)

    _PC.update(
        StampedOut=StampedOut,
        StampedIn=StampedIn,
        Passthrough=Passthrough,
        Source=Source,
        Sink=Sink,
        Pipeline=Pipeline,
        PipelineParams=PipelineParams,
        PipelineWorker=PipelineWorker,
        WorkerRunner=WorkerRunner,
        FrameDirection=FrameDirection,
    )
    return _PC


def pc_make(kind: str) -> MakeFrame:
    cls = pipecat_classes()["StampedIn" if kind == "system" else "StampedOut"]

    def make(seq: int, scope: int) -> Any:
        return cls(audio=bytes(FRAME_BYTES), sample_rate=SAMPLE_RATE, num_channels=1, seq=seq)

    return make


async def pc_run(nodes: int, probe: Probe, drive: Callable[[Send], Coroutine[Any, Any, None]]) -> None:
    pc = pipecat_classes()
    source = pc["Source"]()
    pipeline = pc["Pipeline"]([source, *[pc["Passthrough"]() for _ in range(nodes)], pc["Sink"](probe)])
    worker = pc["PipelineWorker"](
        pipeline,
        params=pc["PipelineParams"](enable_metrics=False, enable_usage_metrics=False),
        idle_timeout_secs=None,
        cancel_on_idle_timeout=False,
        enable_rtvi=False,
        enable_turn_tracking=False,
        check_dangling_tasks=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _on_started(_w: Any, _f: Any) -> None:
        started.set()

    runner = pc["WorkerRunner"](handle_sigint=False, check_dangling_tasks=False)
    await runner.add_workers(worker)
    run_task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.sleep(0.01)  # let every processor's tasks settle after the StartFrame
    try:
        await drive(source.push_frame)
    finally:
        await worker.cancel()
        await asyncio.wait_for(run_task, 30)


# ---------------------------------------------------------------------------------------------------
# Scenarios. Each returns plain numbers; every one runs in a fresh event loop of the given kind.


def run_in_loop(loop_kind: str, coro: Coroutine[Any, Any, Any]) -> Any:
    gc.collect()
    factory = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def per_hop_ah(loop_kind: str, nodes: int, n: int, warm: int) -> dict[str, float]:
    registry = ah_registry()
    graph = ah_graph(registry, nodes)

    async def main() -> dict[str, float]:
        probe = Probe(warm + n)

        async def drive(send: Send, _scopes: ScopeRegistry) -> None:
            await drive_one_in_flight(send, ah_make, probe, warm + n)

        await ah_run(graph, Bench(probe, drive))
        return hop_stats(latencies_ns(probe, warm, warm + n), nodes + 1)

    return run_in_loop(loop_kind, main())


def per_hop_pc(loop_kind: str, nodes: int, n: int, warm: int, kind: str) -> dict[str, float]:
    make = pc_make(kind)

    async def main() -> dict[str, float]:
        probe = Probe(warm + n)

        async def drive(send: Send) -> None:
            await drive_one_in_flight(send, make, probe, warm + n)

        await pc_run(nodes, probe, drive)
        return hop_stats(latencies_ns(probe, warm, warm + n), nodes + 1)

    return run_in_loop(loop_kind, main())


def per_hop_queue(loop_kind: str, nodes: int, n: int, warm: int) -> dict[str, float]:
    """The floor: the same chain of tasks joined by bare ``asyncio.Queue(32)`` s, nothing else."""

    async def main() -> dict[str, float]:
        probe = Probe(warm + n)
        queues: list[asyncio.Queue[StampedAudio]] = [asyncio.Queue(32) for _ in range(nodes + 1)]

        async def relay(i: int) -> None:
            get, put = queues[i].get, queues[i + 1].put
            while True:
                await put(await get())

        async def sink() -> None:
            get, arrived = queues[-1].get, probe.arrived
            while True:
                arrived((await get()).seq)

        tasks = [asyncio.create_task(relay(i)) for i in range(nodes)] + [asyncio.create_task(sink())]
        await drive_one_in_flight(queues[0].put, ah_make, probe, warm + n)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return hop_stats(latencies_ns(probe, warm, warm + n), nodes + 1)

    return run_in_loop(loop_kind, main())


def hop_stats(lat: np.ndarray, hops: int) -> dict[str, float]:
    per_hop = lat / hops / 1000.0  # µs
    return {
        "hops": hops,
        "samples": len(lat),
        "hop_p50_us": pct(per_hop, 50),
        "hop_p99_us": pct(per_hop, 99),
        "e2e_p50_us": pct(lat / 1000.0, 50),
        "e2e_p99_us": pct(lat / 1000.0, 99),
    }


def burst_ah(loop_kind: str, n: int, capacity: int, trace_memory: bool) -> dict[str, float]:
    registry = ah_registry()
    graph = ah_graph(registry, 10, capacity)

    async def main() -> dict[str, float]:
        probe = Probe(n)
        mem: dict[str, int] = {}

        async def drive(send: Send, _scopes: ScopeRegistry) -> None:
            if trace_memory:
                tracemalloc.reset_peak()
                mem["base"] = tracemalloc.get_traced_memory()[0]
            t0 = ns()
            await drive_burst(send, ah_make, probe, n, wait_s=60)
            mem["wall"] = ns() - t0
            if trace_memory:
                mem["peak"] = tracemalloc.get_traced_memory()[1]

        session = await ah_run(graph, Bench(probe, drive))
        lost_stats = sum(
            ch.stats.dropped_overflow + ch.stats.discarded_cancelled + ch.stats.discarded_unconsumed
            for ch in session.channels.values()
        )
        peak_depth = sum(ch.stats.peak_depth for ch in session.channels.values())
        return burst_stats(probe, n, mem, extra={"counted_undelivered": lost_stats, "peak_depth": peak_depth})

    return traced(trace_memory, lambda: run_in_loop(loop_kind, main()))


def burst_pc(loop_kind: str, n: int, kind: str, trace_memory: bool) -> dict[str, float]:
    make = pc_make(kind)

    async def main() -> dict[str, float]:
        probe = Probe(n)
        mem: dict[str, int] = {}

        async def drive(send: Send) -> None:
            if trace_memory:
                tracemalloc.reset_peak()
                mem["base"] = tracemalloc.get_traced_memory()[0]
            t0 = ns()
            await drive_burst(send, make, probe, n, wait_s=60)
            mem["wall"] = ns() - t0
            if trace_memory:
                mem["peak"] = tracemalloc.get_traced_memory()[1]

        await pc_run(10, probe, drive)
        return burst_stats(probe, n, mem)

    return traced(trace_memory, lambda: run_in_loop(loop_kind, main()))


def traced(on: bool, fn: Callable[[], dict[str, float]]) -> dict[str, float]:
    if not on:
        return fn()
    tracemalloc.start()
    try:
        return fn()
    finally:
        tracemalloc.stop()


def burst_stats(
    probe: Probe, n: int, mem: dict[str, int], extra: dict[str, int] | None = None
) -> dict[str, Any]:
    lat = latencies_ns(probe, 0, n) / 1e6  # ms
    out: dict[str, Any] = {
        "frames": n,
        "received": probe.received,
        "lost": n - probe.received,
        "p50_ms": pct(lat, 50),
        "p99_ms": pct(lat, 99),
        "max_ms": float(lat.max()) if len(lat) else float("nan"),
        "wall_ms": mem.get("wall", 0) / 1e6,
    }
    if "peak" in mem:
        out["peak_mem_kib"] = (mem["peak"] - mem["base"]) / 1024
    out.update(extra or {})
    return out


def cancel_ah(loop_kind: str, rounds: int, queued: int, nodes: int, capacity: int) -> dict[str, Any]:
    """Per round: ``queued`` frames of scope A fill the last hops behind a gated sink; cancel A; open
    the gate and send scope B's first frame."""
    registry = ah_registry()
    graph = ah_graph(registry, nodes, capacity)
    per_round = queued + 1

    async def main() -> dict[str, Any]:
        probe = Probe(rounds * per_round, gated=True)
        gate = probe.gate
        assert gate is not None
        rows: list[dict[str, float]] = []
        holder: dict[str, Session] = {}

        async def drive(send: Send, scopes: ScopeRegistry) -> None:
            session = holder["session"]
            channels = list(session.channels.values())
            for r in range(rounds):
                base = r * per_round
                a = scopes.open("bench-a")
                for i in range(queued):
                    await send(ah_make(base + i, a))
                # Let the nodes move the frames as far as they go (until the gated sink's channel).
                await asyncio.sleep(0.02)
                received_before = probe.received
                depth_before = sum(ch.depth for ch in channels)
                discarded_before = sum(ch.stats.discarded_cancelled for ch in channels)
                t0 = ns()
                purged = scopes.cancel(a)
                t1 = ns()
                depth_after = sum(ch.depth for ch in channels)
                b = scopes.open("bench-b")
                gate.set()
                seq_b = base + queued
                arrival = probe.expect(probe.received + 1)
                probe.t_send[seq_b] = ns()
                await send(ah_make(seq_b, b))
                # Every frame of A is accounted for once nothing holds one: poll the counters.
                t_drained = 0
                pending = queued - purged
                while True:
                    discarded = sum(ch.stats.discarded_cancelled for ch in channels) - discarded_before
                    if discarded >= queued and not t_drained:
                        t_drained = ns()
                    if arrival.done() and t_drained:
                        break
                    if arrival.done() and ns() - t1 > 1_000_000_000:
                        break  # never drained: reported below
                    await asyncio.sleep(0)
                leaked = probe.received - received_before - 1  # frames of A that reached the sink
                scopes.finish(b)
                rows.append(
                    {
                        "queued": depth_before,
                        "purged": purged,
                        "held_by_nodes": pending,
                        "depth_after_cancel": depth_after,
                        "purge_us": (t1 - t0) / 1000,
                        "drained_us": (t_drained - t0) / 1000 if t_drained else float("nan"),
                        "next_scope_first_frame_us": (probe.t_recv[seq_b] - t0) / 1000,
                        "next_frame_transit_us": (probe.t_recv[seq_b] - probe.t_send[seq_b]) / 1000,
                        "leaked": leaked,
                    }
                )
                await asyncio.sleep(0.005)
            gate.set()  # let the sink see the end of the stream

        session = Session(graph, attachments={"bench": Bench(probe, drive)})
        holder["session"] = session
        result = await session.run()
        if not result.ok:
            raise RuntimeError(f"ah session failed: {result.failure}")
        return {
            "rounds": rounds,
            "nodes": nodes,
            "capacity": capacity,
            "queued_median": statistics.median(r["queued"] for r in rows),
            "purged_median": statistics.median(r["purged"] for r in rows),
            "held_by_nodes_median": statistics.median(r["held_by_nodes"] for r in rows),
            "depth_after_cancel_max": max(r["depth_after_cancel"] for r in rows),
            "purge_p50_us": statistics.median(r["purge_us"] for r in rows),
            "purge_max_us": max(r["purge_us"] for r in rows),
            "drained_p50_us": statistics.median(r["drained_us"] for r in rows),
            "next_first_frame_p50_us": statistics.median(r["next_scope_first_frame_us"] for r in rows),
            "next_first_frame_max_us": max(r["next_scope_first_frame_us"] for r in rows),
            "next_frame_transit_p50_us": statistics.median(r["next_frame_transit_us"] for r in rows),
            "leaked_total": sum(r["leaked"] for r in rows),
            "per_round": rows,
        }

    return run_in_loop(loop_kind, main())


# ---------------------------------------------------------------------------------------------------
# Orchestration, table, JSON.


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every numeric field over repeated runs (and the runs themselves)."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, int | float):
            out[key] = statistics.median(float(r[key]) for r in runs)
    out["repeats"] = len(runs)
    out["runs"] = runs
    return out


def versions() -> dict[str, str]:
    out = {}
    for dist in ("automagik-hello", "pipecat-ai", "uvloop"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


NODE_COUNTS = (0, 10, 20)
PC_KINDS = ("data", "system")
AH_CAPS = (32, 8)
CANCEL = {"queued": 1000, "nodes": 10, "capacity": 100}


def bench_loop(
    lk: str, args: argparse.Namespace, step: Callable[[str, Callable[[], Any]], Any]
) -> dict[str, Any]:
    """Every figure under one kind of event loop."""
    res: dict[str, Any] = {"per_hop": {}, "burst": {}, "cancel": {}}
    for nodes in NODE_COUNTS:
        # Interleave the engines run by run, so that background load hits all of them alike.
        runs: dict[str, list[dict[str, Any]]] = {"ah": [], "asyncio_queue": []}
        runs.update({f"pipecat_{k}": [] for k in PC_KINDS})
        for rep in range(args.repeats):
            tag = f"{lk}: per-hop, {nodes} nodes ({rep + 1}/{args.repeats})"
            runs["ah"].append(step(f"{tag} ah", lambda n=nodes: per_hop_ah(lk, n, args.frames, args.warmup)))
            runs["asyncio_queue"].append(
                step(f"{tag} queue", lambda n=nodes: per_hop_queue(lk, n, args.frames, args.warmup))
            )
            for k in PC_KINDS:
                runs[f"pipecat_{k}"].append(
                    step(
                        f"{tag} pipecat/{k}",
                        lambda n=nodes, k=k: per_hop_pc(lk, n, args.frames, args.warmup, k),
                    )
                )
        row = {name: median_of(r) for name, r in runs.items()}
        for k in PC_KINDS:
            row[f"ratio_vs_pipecat_{k}"] = row["ah"]["hop_p50_us"] / row[f"pipecat_{k}"]["hop_p50_us"]
        row["ratio_vs_asyncio_queue"] = row["ah"]["hop_p50_us"] / row["asyncio_queue"]["hop_p50_us"]
        res["per_hop"][str(nodes)] = row
    brow: dict[str, Any] = {}
    jobs: list[tuple[str, Callable[[bool], dict[str, Any]]]] = [
        (f"ah_cap{cap}", lambda m, c=cap: burst_ah(lk, args.burst, c, m)) for cap in AH_CAPS
    ]
    jobs += [(f"pipecat_{k}", lambda m, k=k: burst_pc(lk, args.burst, k, m)) for k in PC_KINDS]
    for name, fn in jobs:
        lat_runs = [
            step(f"{lk}: burst {name} ({rep + 1}/{args.burst_repeats})", lambda fn=fn: fn(False))
            for rep in range(args.burst_repeats)
        ]
        brow[name] = median_of(lat_runs)
        mem = step(f"{lk}: burst {name} (tracemalloc)", lambda fn=fn: fn(True))
        brow[name]["memory_run"] = mem
        brow[name]["peak_mem_kib"] = mem["peak_mem_kib"]
        brow[name]["lost"] = max(brow[name]["lost"], mem["lost"])
    for k in PC_KINDS:
        for cap in AH_CAPS:
            brow[f"ratio_p50_ah_cap{cap}_vs_pipecat_{k}"] = (
                brow[f"ah_cap{cap}"]["p50_ms"] / brow[f"pipecat_{k}"]["p50_ms"]
            )
    res["burst"] = brow
    res["cancel"] = step(f"{lk}: cancel ah", lambda: cancel_ah(lk, args.cancel_rounds, **CANCEL))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="runs per figure; the median is reported")
    ap.add_argument("--frames", type=int, default=800, help="one-in-flight frames measured per run")
    ap.add_argument("--warmup", type=int, default=100, help="one-in-flight frames sent before measuring")
    ap.add_argument("--burst", type=int, default=5000, help="frames in the burst")
    ap.add_argument("--burst-repeats", type=int, default=3, help="latency runs per burst figure")
    ap.add_argument("--cancel-rounds", type=int, default=20, help="cancel measurements per loop")
    ap.add_argument("--loops", default="asyncio,uvloop", help="comma-separated: asyncio, uvloop")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    loops = [x.strip() for x in args.loops.split(",") if x.strip()]
    console = Console(width=None if sys.stdout.isatty() else 150)
    t_start = time.perf_counter()
    pipecat_classes()
    # Both engines live in this process, with Pipecat's ~100k import-time objects: a full collection
    # scanning them stalls the loop for tens of ms, whichever engine is running. Freeze what the
    # imports made (a common server start-up step) so the tails measure the engines, not that heap.
    gc.collect()
    gc.freeze()

    hop_jobs = len(NODE_COUNTS) * (2 + len(PC_KINDS)) * args.repeats
    burst_jobs = (len(AH_CAPS) + len(PC_KINDS)) * (args.burst_repeats + 1)
    total = len(loops) * (hop_jobs + burst_jobs + 1)

    results: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description:<48}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("engine benchmark", total=total)

        def step(desc: str, fn: Callable[[], Any]) -> Any:
            progress.update(task, description=desc)
            value = fn()
            progress.advance(task)
            return value

        for lk in loops:
            results[lk] = bench_loop(lk, args, step)

    frame_bytes = frame_footprint()
    report = {
        "benchmark": "engine",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - t_start, 1),
        "command": "make bench  # = .venv-bench/bin/python experiments/engine_bench.py "
        + " ".join(sys.argv[1:]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "versions": versions(),
        },
        "settings": {
            "frame_bytes": FRAME_BYTES,
            "sample_rate": SAMPLE_RATE,
            "repeats": args.repeats,
            "one_in_flight_frames": args.frames,
            "warmup_frames": args.warmup,
            "burst_frames": args.burst,
            "burst_repeats": args.burst_repeats,
            "burst_nodes": 10,
            "cancel": {"rounds": args.cancel_rounds, **CANCEL},
            "hops": "nodes + 1 edges (source -> n passthroughs -> sink); with 0 nodes, source -> sink",
            "figures": "the median over repeats of each run's p50/p99",
            "gc": "gc.freeze() after imports; gc.collect() before every run; gc stays enabled",
            "pipecat_frames": {
                "data": "OutputAudioRawFrame subclass: a DataFrame, ordered and interruptible, "
                "through each processor's input queue and process queue (agent audio takes this path)",
                "system": "InputAudioRawFrame subclass: a SystemFrame, through the input queue only "
                "(user audio takes this path)",
            },
            "asyncio_queue": "reference floor: the same task chain joined by bare asyncio.Queue(32)s",
        },
        "ah_frame_bytes": frame_bytes,
        "results": results,
        "goals": evaluate(results, frame_bytes),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print_report(console, report)
    console.print(f"wrote {args.out} ({report['duration_s']} s)")


def frame_footprint() -> int:
    """Bytes one ah benchmark frame costs (object + its PCM), to state the memory bound."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    frames = [ah_make(i, 0) for i in range(100)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del frames
    return (after - before) // 100


def burst_bound_kib(capacity: int, frame_bytes: int) -> float:
    """Memory a lossless burst may hold: every channel full plus one frame in each node's hands and
    the source's, plus a fixed 64 KiB for waiters and bookkeeping. It does not grow with the burst."""
    nodes = 10
    return ((nodes + 1) * capacity + nodes + 2) * frame_bytes / 1024 + 64


def evaluate(results: dict[str, Any], frame_bytes: int) -> dict[str, Any]:
    goals: dict[str, Any] = {}
    for lk, res in results.items():
        g: dict[str, Any] = {}
        for nodes, row in res["per_hop"].items():
            g[f"per_hop_{nodes}_nodes"] = {
                f"vs_pipecat_{k}": {
                    "ratio": row[f"ratio_vs_pipecat_{k}"],
                    "met": row[f"ratio_vs_pipecat_{k}"] <= GOAL_HOP_RATIO,
                }
                for k in PC_KINDS
            }
        for cap in AH_CAPS:
            b = res["burst"][f"ah_cap{cap}"]
            bound = burst_bound_kib(cap, frame_bytes)
            g[f"burst_cap{cap}"] = {
                "p50_ms": b["p50_ms"],
                "p50_met": b["p50_ms"] < GOAL_BURST_P50_MS,
                "peak_mem_kib": b["peak_mem_kib"],
                "bound_kib": bound,
                "memory_bounded_met": b["peak_mem_kib"] <= bound,
                "lost": b["lost"],
                "lossless_met": b["lost"] == 0,
            }
        c = res["cancel"]
        g["cancel"] = {
            "purge_p50_us": c["purge_p50_us"],
            "purge_max_us": c["purge_max_us"],
            "met": c["purge_max_us"] < GOAL_PURGE_MS * 1000,
            "leaked": c["leaked_total"],
            "no_leak_met": c["leaked_total"] == 0,
        }
        goals[lk] = g
    return goals


def mark(ok: bool) -> str:
    return "[green]✓[/]" if ok else "[red]✗[/]"


def p50_99(d: dict[str, Any], key: str = "hop", unit: str = "us") -> str:
    return f"{d[f'{key}_p50_{unit}']:.1f} / {d[f'{key}_p99_{unit}']:.1f}"


def print_report(console: Console, report: dict[str, Any]) -> None:
    m, st = report["machine"], report["settings"]
    console.print(
        f"[bold]engine benchmark[/] — {m['cpu_count']} CPUs, Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f"; medians of {st['repeats']} runs"
    )
    results, goals = report["results"], report["goals"]

    t = Table(title="(a) per-hop latency, µs, one 20 ms frame in flight (p50 / p99)", title_justify="left")
    for col in ("loop", "nodes", "hops", "ah", "asyncio.Queue floor", "Pipecat data", "Pipecat system"):
        t.add_column(col, justify="right")
    t.add_column("ah / Pipecat data", justify="right")
    t.add_column("ah / Pipecat system", justify="right")
    for lk, res in results.items():
        for nodes, row in res["per_hop"].items():
            g = goals[lk][f"per_hop_{nodes}_nodes"]
            t.add_row(
                lk,
                nodes,
                str(int(row["ah"]["hops"])),
                p50_99(row["ah"]),
                p50_99(row["asyncio_queue"]),
                p50_99(row["pipecat_data"]),
                p50_99(row["pipecat_system"]),
                f"{g['vs_pipecat_data']['ratio']:.2f} {mark(g['vs_pipecat_data']['met'])}",
                f"{g['vs_pipecat_system']['ratio']:.2f} {mark(g['vs_pipecat_system']['met'])}",
            )
    console.print(t)
    console.print("   goal: ah p50 ≤ 0.25 × Pipecat's p50, same run\n")

    t = Table(
        title=f"(b) burst of {st['burst_frames']} frames through 10 nodes (latency from the send call)",
        title_justify="left",
    )
    for col in (
        "loop",
        "engine",
        "p50 ms",
        "p99 ms",
        "peak mem KiB",
        "lost",
        "wall ms",
        "p50 vs Pipecat data",
    ):
        t.add_column(col, justify="right")
    t.add_column("goals: p50 < 5 ms, memory bounded, lossless", justify="left")
    for lk, res in results.items():
        b = res["burst"]
        for key, label in (
            ("ah_cap32", "ah, block edges, capacity 32 (default)"),
            ("ah_cap8", "ah, block edges, capacity 8"),
            ("pipecat_data", "Pipecat, OutputAudioRawFrame"),
            ("pipecat_system", "Pipecat, InputAudioRawFrame"),
        ):
            r = b[key]
            gtxt = ratio = ""
            if key.startswith("ah_"):
                g = goals[lk][f"burst_{key[3:]}"]
                gtxt = (
                    f"{mark(g['p50_met'])} {mark(g['memory_bounded_met'])} (≤ {g['bound_kib']:.0f} KiB) "
                    f"{mark(g['lossless_met'])}"
                )
                ratio = f"{r['p50_ms'] / b['pipecat_data']['p50_ms']:.4f}×"
            t.add_row(
                lk,
                label,
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['peak_mem_kib']:.0f}",
                f"{r['lost']:.0f}",
                f"{r['wall_ms']:.0f}",
                ratio,
                gtxt,
            )
    console.print(t)

    t = Table(
        title=f"(c) ah: cancel a scope with ~{CANCEL['queued']} frames queued across "
        f"{CANCEL['nodes'] + 1} channels (capacity {CANCEL['capacity']}), µs",
        title_justify="left",
    )
    for col in (
        "loop",
        "queued",
        "in nodes' hands",
        "purge p50 / max",
        "none left",
        "next scope's 1st frame at sink p50 / max",
        "leaked",
        "goal: purge < 1 ms",
    ):
        t.add_column(col, justify="right")
    for lk, res in results.items():
        c, g = res["cancel"], goals[lk]["cancel"]
        t.add_row(
            lk,
            f"{c['queued_median']:.0f}",
            f"{c['held_by_nodes_median']:.0f}",
            f"{c['purge_p50_us']:.0f} / {c['purge_max_us']:.0f}",
            f"{c['drained_p50_us']:.0f}",
            f"{c['next_first_frame_p50_us']:.0f} / {c['next_first_frame_max_us']:.0f}",
            f"{c['leaked_total']} {mark(g['no_leak_met'])}",
            mark(g["met"]),
        )
    console.print(t)
    console.print(
        "Notes: hops = nodes + 1 edges. Pipecat's queues are unbounded, so its burst is queued (never lost,"
        " never pushed back) and its memory grows with the burst; a data frame crosses two queues (two task"
        " switches) per processor, a system frame one. Pipecat's direct mode (no queue, no task per"
        " processor) is not equivalent to a node and is not measured. With one frame in flight every hop"
        " is one event-loop iteration; the asyncio.Queue column is that floor."
    )


if __name__ == "__main__":
    main()
