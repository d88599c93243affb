"""A trace per turn: the finished :class:`TurnRecord` becomes a ``turn`` span with its children.

One trace per turn (each ``turn`` span is a root), as Pipecat and LiveKit do, so a collector shows a
turn as one waterfall::

    turn                      conversation id, turn index, graph, variant, §5 figures, interrupted
    ├── user_speech           first voiced moment -> last voiced moment
    ├── endpointing           end of speech -> turn committed
    ├── stt                   VAD end -> final transcript
    ├── llm                   committed -> last token   (ah.llm.ttft_ms)
    ├── tts                   first text -> last audio  (ah.tts.time_to_first_audio_ms)
    ├── agent_speech          first audio sent -> heard to the end, or cut off
    └── interruption          onset of the user's speech -> cancel -> interruption event sent

Spans are made after the fact with their measured start and end times (the turn is over when they
are made), so nothing is held open and the hot path never touches the tracer. What was said goes
only under ``ah.pii.*`` and only with ``pii: true`` (LiveKit's ``lk.pii.*`` convention), so a
collector can drop that namespace.
"""

from __future__ import annotations

import sys
from typing import IO

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.util.types import AttributeValue

from ah.telemetry.config import TracesConfig
from ah.telemetry.record import TurnRecord
from ah.telemetry.turns import SessionInfo

PII_PREFIX = "ah.pii."


def _jsonl(span: ReadableSpan) -> str:
    text: str = span.to_json(indent=None)
    return text + "\n"


def make_provider(config: TracesConfig, *, console: IO[str] | None = None) -> TracerProvider | None:
    """A tracer provider with the configured exporters, or None when traces are off."""
    if not config.exporters:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
    for name in dict.fromkeys(config.exporters):
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint, headers=config.otlp_headers or None)
        elif name == "console":
            exporter = ConsoleSpanExporter(out=console or sys.stdout)
        else:
            config.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            # The SDK's own console exporter, one compact JSON object per line, into a file.
            exporter = ConsoleSpanExporter(
                out=config.jsonl_path.open("a", encoding="utf-8"), formatter=_jsonl
            )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class TraceSink:
    """Turns finished turns into spans on ``tracer``."""

    def __init__(self, tracer: trace.Tracer, *, pii: bool = False) -> None:
        self.tracer = tracer
        self.pii = pii

    def session_started(self, info: SessionInfo) -> None:
        pass

    def error(self, info: SessionInfo, kind: str) -> None:
        pass

    def session_ended(self, info: SessionInfo, ok: bool) -> None:
        pass

    def turn(self, info: SessionInfo, turn: TurnRecord) -> None:
        start, end = turn.start, turn.end
        if start is None or end is None:
            return
        ns = info.wall_ns
        figures = turn.figures()
        attrs: dict[str, AttributeValue] = {
            "ah.conversation.id": info.conversation_id,
            "ah.session.id": info.session_id,
            "ah.turn.index": turn.index,
            "ah.graph.name": info.graph,
            "ah.graph.variant": info.variant,
            "ah.turn.interrupted": turn.interrupted,
            "ah.turn.typed": turn.typed,
            "ah.turn.pauses": turn.pauses,
        }
        attrs.update({f"ah.{k}": v for k, v in figures.items()})
        if self.pii:
            attrs[PII_PREFIX + "user_text"] = turn.user_text
            attrs[PII_PREFIX + "agent_text"] = turn.agent_text
        root = self.tracer.start_span("turn", context=Context(), start_time=ns(start), attributes=attrs)
        ctx = trace.set_span_in_context(root)

        def child(
            name: str, a: float | None, b: float | None, extra: dict[str, AttributeValue] | None = None
        ) -> None:
            if a is None or b is None:
                return
            span = self.tracer.start_span(name, context=ctx, start_time=ns(a), attributes=extra)
            span.end(end_time=ns(max(a, b)))

        child("user_speech", turn.speech_start, turn.speech_end)
        child("endpointing", turn.speech_end, turn.commit, _pick(figures, "endpointing_ms"))
        stt: dict[str, AttributeValue] = {"ah.node.type": turn.stt_node}
        if "asr_confidence" in figures:
            stt["ah.asr_confidence"] = figures["asr_confidence"]
        child("stt", turn.vad_end_seen, turn.stt_end, stt)
        llm_from = turn.commit if turn.commit is not None else turn.llm_start
        llm: dict[str, AttributeValue] = {"ah.node.type": turn.llm_node}
        if "llm_ttft_ms" in figures:
            llm["ah.llm.ttft_ms"] = figures["llm_ttft_ms"]
        child("llm", llm_from, turn.llm_end or turn.cancel_at or turn.llm_first, llm)
        tts: dict[str, AttributeValue] = {"ah.node.type": turn.tts_node}
        if "tts_ttfa_ms" in figures:
            tts["ah.tts.time_to_first_audio_ms"] = figures["tts_ttfa_ms"]
        child("tts", turn.llm_first, turn.tts_end, tts)
        child("agent_speech", turn.audio_sent, turn.reply_end, {"ah.turn.interrupted": turn.interrupted})
        if turn.cancel_at is not None:
            intr: dict[str, AttributeValue] = {}
            for key in ("barge_in_reaction_ms", "cancel_tail_ms", "interruption_event_ms"):
                if key in figures:
                    intr[f"ah.{key}"] = figures[key]
            onset = turn.barge_in_onset if turn.barge_in_onset is not None else turn.cancel_at
            child("interruption", onset, turn.interruption_sent or turn.cancel_at, intr)
        root.end(end_time=ns(end))


def _pick(figures: dict[str, float], key: str) -> dict[str, AttributeValue]:
    return {f"ah.{key}": figures[key]} if key in figures else {}
