"""Telemetry settings: which trace exporters, whether text may be recorded, where metrics go.

Read from a YAML file (``ah run --telemetry telemetry.yaml``) or built from the CLI's shortcuts::

    traces:
      exporters: [otlp, jsonl]          # any of otlp, console, jsonl; none: no traces
      otlp_endpoint: http://collector:4318/v1/traces
      jsonl_path: traces.jsonl
      pii: false                        # user and agent text under ah.pii.*; off unless asked for
    metrics:
      jsonl_dir: metrics/               # one <conversation id>.jsonl of per-turn figures per session
      prometheus: true                  # /metrics on the server
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Exporter = Literal["otlp", "console", "jsonl"]


class TracesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exporters: list[Exporter] = Field(default_factory=list, description="Where turn traces go.")
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP traces URL; default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else "
        "http://localhost:4318/v1/traces (the exporter's own rules).",
    )
    otlp_headers: dict[str, str] = Field(default_factory=dict, description="Extra headers (auth) for OTLP.")
    jsonl_path: Path = Field(Path("traces.jsonl"), description="File the jsonl exporter appends spans to.")
    pii: bool = Field(
        False, description="Record what the user and the agent said (ah.pii.user_text, ah.pii.agent_text)."
    )
    service_name: str = Field("ah", description="service.name of the traces.")


class MetricsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jsonl_dir: Path | None = Field(None, description="Directory of per-session per-turn metrics files.")
    prometheus: bool = Field(True, description="Serve Prometheus metrics at /metrics.")


class TelemetryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    traces: TracesConfig = Field(default_factory=TracesConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    @property
    def records_turns(self) -> bool:
        """Whether sessions need a turn tracker at all."""
        return bool(self.traces.exporters) or self.metrics.jsonl_dir is not None or self.metrics.prometheus

    @classmethod
    def load(cls, path: Path) -> TelemetryConfig:
        """Read a telemetry file; a bad one raises ``ValueError`` naming the file and the field."""
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read telemetry settings: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ValueError(f"{path}: {where}: {first['msg']}") from None
