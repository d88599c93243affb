"""Per-turn metrics: one JSONL file per session, and Prometheus histograms and counters.

Prometheus metrics live in the server's own registry (not the process-global one), so two servers
in one process (tests) never mix their counts. ``ah_active_sessions`` is the gauge an autoscaler
reads (deploy/kubernetes); the histograms' buckets span what a voice agent sees, from a few
milliseconds (a cancel tail) to seconds (a slow provider).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ah.telemetry.record import TurnMetrics, TurnRecord
from ah.telemetry.turns import SessionInfo

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
TAIL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
#: Provider stages and the figure that times each.
STAGES = {"stt": "stt_ms", "llm_ttft": "llm_ttft_ms", "tts_ttfa": "tts_ttfa_ms"}


def turn_metrics(info: SessionInfo, turn: TurnRecord, *, pii: bool = False) -> TurnMetrics:
    return TurnMetrics(
        conversation_id=info.conversation_id,
        session_id=info.session_id,
        graph=info.graph,
        variant=info.variant,
        turn=turn.index,
        typed=turn.typed,
        interrupted=turn.interrupted,
        pauses=turn.pauses,
        t_start_s=info.since_start(turn.start),
        figures=turn.figures(),
        stt_node=turn.stt_node,
        llm_node=turn.llm_node,
        tts_node=turn.tts_node,
        user_text=turn.user_text if pii else None,
        agent_text=turn.agent_text if pii else None,
    )


class JsonlSink:
    """``DIR/<conversation id>.jsonl``: one line of :class:`TurnMetrics` per finished turn."""

    def __init__(self, directory: Path, *, pii: bool = False) -> None:
        self.directory = directory
        self.pii = pii
        self._files: dict[str, IO[str]] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def session_started(self, info: SessionInfo) -> None:
        pass

    def _file(self, info: SessionInfo) -> IO[str]:
        f = self._files.get(info.session_id)
        if f is None:
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in info.conversation_id)
            f = self._files[info.session_id] = (self.directory / f"{name}.jsonl").open("a", encoding="utf-8")
        return f

    def turn(self, info: SessionInfo, turn: TurnRecord) -> None:
        f = self._file(info)
        f.write(turn_metrics(info, turn, pii=self.pii).model_dump_json(exclude_none=True) + "\n")
        f.flush()

    def error(self, info: SessionInfo, kind: str) -> None:
        pass

    def session_ended(self, info: SessionInfo, ok: bool) -> None:
        f = self._files.pop(info.session_id, None)
        if f is not None:
            f.close()


class PrometheusSink:
    """Histograms of the §5 figures and counters of sessions, turns and errors, in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.active = Gauge(
            "ah_active_sessions", "Sessions running now (the autoscaling signal).", registry=registry
        )
        self.sessions_started = Counter(
            "ah_sessions_started", "Sessions started.", ["graph"], registry=registry
        )
        self.sessions_ended = Counter(
            "ah_sessions_ended",
            "Sessions ended, by outcome (ok, failed).",
            ["graph", "outcome"],
            registry=registry,
        )
        self.turns = Counter(
            "ah_turns",
            "Turns finished, by whether the reply was interrupted.",
            ["graph", "interrupted"],
            registry=registry,
        )
        self.errors = Counter(
            "ah_errors",
            "Errors: error events sent to clients and node failures, by kind.",
            ["graph", "kind"],
            registry=registry,
        )
        self.response_latency = Histogram(
            "ah_response_latency_seconds",
            "End of user speech to the first agent audio sent (ARCHITECTURE.md §5).",
            ["graph"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.endpointing = Histogram(
            "ah_endpointing_seconds",
            "End of user speech to the turn committed.",
            ["graph"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.cancel_tail = Histogram(
            "ah_cancel_tail_seconds",
            "Barge-in decision to the last audio of the cancelled reply leaving.",
            ["graph"],
            buckets=TAIL_BUCKETS,
            registry=registry,
        )
        self.interruption_event = Histogram(
            "ah_interruption_event_seconds",
            "Barge-in decision to the interruption event sent.",
            ["graph"],
            buckets=TAIL_BUCKETS,
            registry=registry,
        )
        self.provider = Histogram(
            "ah_provider_latency_seconds",
            "Provider latency by stage (stt: to the final transcript; llm_ttft: to the first token; "
            "tts_ttfa: to the first audio) and node type.",
            ["graph", "stage", "node_type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def session_started(self, info: SessionInfo) -> None:
        self.sessions_started.labels(info.graph).inc()
        self.active.inc()

    def session_ended(self, info: SessionInfo, ok: bool) -> None:
        self.sessions_ended.labels(info.graph, "ok" if ok else "failed").inc()
        self.active.dec()

    def error(self, info: SessionInfo, kind: str) -> None:
        self.errors.labels(info.graph, kind).inc()

    def turn(self, info: SessionInfo, turn: TurnRecord) -> None:
        g = info.graph
        f = turn.figures()
        self.turns.labels(g, str(turn.interrupted).lower()).inc()
        if (v := f.get("response_latency_ms")) is not None:
            self.response_latency.labels(g).observe(v / 1000)
        if (v := f.get("endpointing_ms")) is not None:
            self.endpointing.labels(g).observe(v / 1000)
        if (v := f.get("cancel_tail_ms")) is not None:
            self.cancel_tail.labels(g).observe(v / 1000)
        if (v := f.get("interruption_event_ms")) is not None:
            self.interruption_event.labels(g).observe(v / 1000)
        nodes = {"stt": turn.stt_node, "llm_ttft": turn.llm_node, "tts_ttfa": turn.tts_node}
        for stage, key in STAGES.items():
            if (v := f.get(key)) is not None:
                self.provider.labels(g, stage, nodes[stage] or "unknown").observe(v / 1000)


def read_turns(path: Path) -> list[TurnMetrics]:
    """The turns of one per-session metrics file; a bad line raises ``ValueError`` naming it."""
    out: list[TurnMetrics] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(TurnMetrics.model_validate(json.loads(line)))
        except ValueError as exc:
            raise ValueError(f"{path}:{n}: not a turn metrics line: {exc}") from None
    return out
