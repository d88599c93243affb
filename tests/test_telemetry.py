"""Traces, per-turn metrics and /metrics, from a real voice conversation through the real server.

The graph is ``tests/graphs/scripted_voice.yaml`` (energy VAD, scripted STT and LLM, tone TTS), the
client a raw protocol client streaming audio in real time: one turn, a barge-in over the reply, a
second turn. Spans go out through the official OTLP/HTTP exporter to a receiver this test runs
(a plain HTTP server decoding ``ExportTraceServiceRequest`` protobufs), so what is checked is what a
collector would get. Timings are not asserted (tests never assert speed), only structure, order
and that every figure is there and consistent.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from ah.runtime.graph_loader import load_graph
from ah.server.app import AgentServer, ServerConfig
from ah.telemetry.config import MetricsConfig, TelemetryConfig, TracesConfig
from ah.telemetry.hub import Telemetry
from ah.telemetry.metrics import read_turns
from tests.test_protocol_messages import AGENT, GRAPH, LINE_1, REPLY_1, Mic, conversation, init, run, speech

CHILDREN = {"user_speech", "endpointing", "stt", "llm", "tts", "agent_speech"}


class Receiver:
    """An OTLP/HTTP traces endpoint: collects the spans of every export request."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.content_types: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.paths.append(self.path)
                receiver.content_types.append(self.headers["Content-Type"])
                request = ExportTraceServiceRequest.FromString(body)
                for rs in request.resource_spans:
                    service = {a.key: _value(a.value) for a in rs.resource.attributes}.get("service.name")
                    for ss in rs.scope_spans:
                        for s in ss.spans:
                            receiver.spans.append(
                                {
                                    "name": s.name,
                                    "trace": s.trace_id.hex(),
                                    "id": s.span_id.hex(),
                                    "parent": s.parent_span_id.hex(),
                                    "start": s.start_time_unix_nano,
                                    "end": s.end_time_unix_nano,
                                    "attrs": {a.key: _value(a.value) for a in s.attributes},
                                    "service": service,
                                }
                            )
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


@contextmanager
def receiving() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


async def barge_in_conversation(telemetry: Telemetry) -> AgentServer:
    """Speak, let the reply play for a while, talk over it, then let the second reply finish."""
    server = AgentServer({AGENT: load_graph(GRAPH)}, ServerConfig(port=0), telemetry=telemetry)
    await server.start()
    url = f"ws://127.0.0.1:{server.port}/v1/convai/conversation?agent_id={AGENT}"
    try:
        async with conversation(url, init({}, user_name="Ana")) as c:
            await c.wait_type("conversation_initiation_metadata")
            mic = Mic(c)
            mic.say(speech(1.0))
            n = (await c.wait_type("audio", 5))["audio_event"]["event_id"]
            await asyncio.sleep(0.6)
            mic.say(speech(0.5))
            await c.wait_for(lambda m: m["type"] == "interruption", 5)
            at = len(c.received)
            await c.wait_for(lambda m: m["type"] == "audio" and m["audio_event"]["event_id"] > n, 5, start=at)
            await asyncio.sleep(0.3)
            mic.stop()
    finally:
        await server.drain(1.0)
    return server


def test_otlp_export_one_trace_per_turn_with_children_and_figures() -> None:
    with receiving() as receiver:
        telemetry = Telemetry(
            TelemetryConfig(traces=TracesConfig(exporters=["otlp"], otlp_endpoint=receiver.url))
        )
        run(barge_in_conversation(telemetry), 30)
        assert telemetry.flush()
        telemetry.shutdown()
        spans = receiver.spans
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    assert set(receiver.content_types) == {"application/x-protobuf"}
    turns = sorted((s for s in spans if s["name"] == "turn"), key=lambda s: s["attrs"]["ah.turn.index"])
    assert [t["attrs"]["ah.turn.index"] for t in turns] == [0, 1], [s["name"] for s in spans]
    assert len({t["trace"] for t in turns}) == 2, "one trace per turn"
    first, second = turns
    for turn in turns:
        a = turn["attrs"]
        assert turn["parent"] == "" and turn["service"] == "ah"
        assert a["ah.graph.name"] == AGENT and len(a["ah.graph.variant"]) >= 8
        assert a["ah.conversation.id"].startswith("conv_")
        assert not [k for k in a if k.startswith("ah.pii.")], "no text without pii: true"
        children = {s["name"]: s for s in spans if s["trace"] == turn["trace"] and s is not turn}
        assert all(c["parent"] == turn["id"] for c in children.values())
        assert CHILDREN <= set(children), sorted(children)
        for c in children.values():
            assert turn["start"] <= c["start"] <= c["end"] <= turn["end"], c["name"]
        # The waterfall is in order: speech, then endpointing, then the LLM, TTS and the agent's speech.
        assert children["user_speech"]["end"] == children["endpointing"]["start"]
        assert children["endpointing"]["end"] == children["llm"]["start"]
        assert children["llm"]["start"] <= children["tts"]["start"] <= children["agent_speech"]["start"]
        assert children["stt"]["attrs"]["ah.node.type"] == "stt.scripted"
        assert children["llm"]["attrs"]["ah.node.type"] == "llm.scripted"
        assert children["tts"]["attrs"]["ah.node.type"] == "tts.tone"
        assert children["llm"]["attrs"]["ah.llm.ttft_ms"] > 0
        assert children["tts"]["attrs"]["ah.tts.time_to_first_audio_ms"] >= 0
        # Response latency is the sum of its parts: endpointing, first token, first audio, engine.
        parts = sum(a[f"ah.{k}"] for k in ("endpointing_ms", "llm_ttft_ms", "tts_ttfa_ms", "engine_ms"))
        assert abs(parts - a["ah.response_latency_ms"]) < 0.01
        assert a["ah.response_latency_ms"] > a["ah.endpointing_ms"] >= 250  # 300 ms silence policy
    assert first["attrs"]["ah.turn.interrupted"] is True
    assert second["attrs"]["ah.turn.interrupted"] is False
    interruption = [s for s in spans if s["name"] == "interruption"]
    assert len(interruption) == 1 and interruption[0]["trace"] == first["trace"]
    fa = first["attrs"]
    assert fa["ah.cancel_tail_ms"] >= 0 and fa["ah.interruption_event_ms"] >= 0
    assert fa["ah.barge_in_reaction_ms"] >= 150  # barge_in_min_speech_ms: 200 in the graph
    assert "interruption" not in {s["name"] for s in spans if s["trace"] == second["trace"]}


def test_pii_text_jsonl_traces_and_per_turn_metrics_files(tmp_path: Path) -> None:
    traces = tmp_path / "traces.jsonl"
    metrics = tmp_path / "metrics"
    telemetry = Telemetry(
        TelemetryConfig(
            traces=TracesConfig(exporters=["jsonl"], jsonl_path=traces, pii=True),
            metrics=MetricsConfig(jsonl_dir=metrics),
        )
    )
    run(barge_in_conversation(telemetry), 30)
    telemetry.flush()
    telemetry.shutdown()
    spans = [json.loads(line) for line in traces.read_text().splitlines()]
    turns = sorted((s for s in spans if s["name"] == "turn"), key=lambda s: s["attributes"]["ah.turn.index"])
    assert turns[0]["attributes"]["ah.pii.user_text"] == LINE_1
    assert turns[0]["attributes"]["ah.pii.agent_text"] == REPLY_1
    files = list(metrics.glob("*.jsonl"))
    assert len(files) == 1 and files[0].stem == turns[0]["attributes"]["ah.conversation.id"]
    rows = read_turns(files[0])
    assert [r.turn for r in rows] == [0, 1]
    assert rows[0].interrupted and not rows[1].interrupted
    assert rows[0].user_text == LINE_1
    for key in ("response_latency_ms", "endpointing_ms", "llm_ttft_ms", "tts_ttfa_ms"):
        assert all(key in r.figures for r in rows), key
    assert "cancel_tail_ms" in rows[0].figures and "cancel_tail_ms" not in rows[1].figures
    assert {r.figures["response_latency_ms"] for r in rows} == {
        t["attributes"]["ah.response_latency_ms"] for t in turns
    }


def test_prometheus_metrics_endpoint() -> None:
    async def main() -> str:
        telemetry = Telemetry()
        server = await barge_in_conversation(telemetry)
        await server.start()  # drained above; serve again only to read /metrics over HTTP
        try:
            url = f"http://127.0.0.1:{server.port}/metrics"
            return await asyncio.to_thread(lambda: urlopen(url, timeout=5).read().decode())
        finally:
            server._server.close() if server._server else None

    text = run(main(), 30)
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    g = f'graph="{AGENT}"'
    assert lines["ah_active_sessions"] == "0.0"
    assert lines[f"ah_sessions_started_total{{{g}}}"] == "1.0"
    assert lines[f'ah_sessions_ended_total{{{g},outcome="ok"}}'] == "1.0"
    assert lines[f'ah_turns_total{{{g},interrupted="true"}}'] == "1.0"
    assert lines[f'ah_turns_total{{{g},interrupted="false"}}'] == "1.0"
    assert lines[f"ah_response_latency_seconds_count{{{g}}}"] == "2.0"
    assert lines[f"ah_cancel_tail_seconds_count{{{g}}}"] == "1.0"
    for stage, node in (("stt", "stt.scripted"), ("llm_ttft", "llm.scripted"), ("tts_ttfa", "tts.tone")):
        assert lines[f'ah_provider_latency_seconds_count{{{g},node_type="{node}",stage="{stage}"}}'] == "2.0"


def test_ah_run_telemetry_file_and_flags(tmp_path: Path) -> None:
    """`ah run --telemetry FILE --trace jsonl --metrics-dir DIR`: a typed turn leaves a trace and a metrics line."""
    from tests.server_helpers import VOICE, ServerProcess, open_conversation, text_turn, ws_url

    settings = tmp_path / "telemetry.yaml"
    settings.write_text("traces:\n  pii: true\nmetrics:\n  prometheus: true\n")
    traces, metrics = tmp_path / "traces.jsonl", tmp_path / "metrics"
    server = ServerProcess(
        str(VOICE), "--telemetry", str(settings), "--trace", "jsonl", "--trace-file", str(traces),
        "--metrics-dir", str(metrics), "--drain-timeout", "1",
    )  # fmt: skip
    try:

        async def main() -> None:
            ws = await open_conversation(ws_url(server.port))
            assert "sunny" in await text_turn(ws, "Hello there")
            await ws.close()

        run(main())
        page = urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
        assert "ah_active_sessions" in page
        server.terminate()
        code, err = server.wait()
        assert code == 0, err
    finally:
        server.close()
    spans = [json.loads(line) for line in traces.read_text().splitlines()]
    turn = next(s for s in spans if s["name"] == "turn")
    assert turn["attributes"]["ah.turn.typed"] is True
    assert turn["attributes"]["ah.pii.user_text"] == "Hello there"
    assert "ah.llm_ttft_ms" in turn["attributes"]
    (line,) = next(metrics.glob("*.jsonl")).read_text().splitlines()
    assert json.loads(line)["typed"] is True


def test_ah_run_refuses_unknown_exporters_and_bad_settings(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "t.yaml"
    bad.write_text("traces:\n  exporters: [zipkin]\n")
    ah = [sys.executable, "-m", "ah.cli", "run", str(GRAPH), "--port", "0"]
    r = subprocess.run([*ah, "--trace", "otpl"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "did you mean 'otlp'" in r.stderr
    r = subprocess.run([*ah, "--telemetry", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and f"{bad}: traces.exporters.0" in r.stderr
