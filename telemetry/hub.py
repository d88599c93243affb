"""Telemetry for a server (or any runner of sessions): one object that owns the tracer provider,
the Prometheus registry and the metrics files, and gives each session its turn tracker."""

from __future__ import annotations

from typing import IO

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ah.telemetry.config import TelemetryConfig
from ah.telemetry.metrics import JsonlSink, PrometheusSink
from ah.telemetry.tracing import TraceSink, make_provider
from ah.telemetry.turns import TurnSink, TurnTracker

PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class Telemetry:
    def __init__(self, config: TelemetryConfig | None = None, *, console: IO[str] | None = None) -> None:
        self.config = config or TelemetryConfig()
        self.provider: TracerProvider | None = make_provider(self.config.traces, console=console)
        self.registry = CollectorRegistry()
        self.sinks: list[TurnSink] = []
        self.prometheus: PrometheusSink | None = None
        if self.provider is not None:
            tracer = self.provider.get_tracer("ah.turns")
            self.sinks.append(TraceSink(tracer, pii=self.config.traces.pii))
        if self.config.metrics.jsonl_dir is not None:
            self.sinks.append(JsonlSink(self.config.metrics.jsonl_dir, pii=self.config.traces.pii))
        if self.config.metrics.prometheus:
            self.prometheus = PrometheusSink(self.registry)
            self.sinks.append(self.prometheus)

    def observer(self) -> TurnTracker | None:
        """A turn tracker for one new session, or None when nothing records turns."""
        return TurnTracker(self.sinks) if self.sinks else None

    def node_tracer(self) -> Tracer | None:
        """The tracer nodes get as ``ctx.tracer``: their own spans go to the same exporters."""
        return self.provider.get_tracer("ah.nodes") if self.provider is not None else None

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Export every finished span now (tests, and before a process exits)."""
        return self.provider.force_flush(int(timeout_s * 1000)) if self.provider is not None else True

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()
