"""The fakes are faithful where clients look: the official SDKs (``groq``, ``openai``) and a plain
``websockets`` client read them as they read the real services (shared/reference/groq-api.md,
elevenlabs-tts-ws.md); and ``ah doctor`` tells, one line each, what is wrong with a graph's keys and
endpoints."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import os
import subprocess
import sys
import time
import wave
from pathlib import Path

import groq
import openai
import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.cloud_helpers import GRAPH, REPLY, conversation, fakes, run, silence, speech
from tests.fakes.elevenlabs_tts import FakeElevenLabsTts, TtsConfig
from tests.fakes.groq import FakeGroq, GroqConfig
from tests.fakes.latency import FaultPlan, Latency
from tests.server_helpers import ROOT, serving, voice_graphs, ws_url


def wav(seconds: float) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(int(32000 * seconds)))
    return buf.getvalue()


# -- Groq -----------------------------------------------------------------------------------------------------------
def test_groq_sdk_reads_the_fake_chat_stream_with_x_groq_and_done() -> None:
    with FakeGroq(GroqConfig(replies=["Hello there, friend."])) as fake:
        client = groq.Groq(api_key="gsk_x", base_url=fake.base_url, max_retries=0)
        stream = client.chat.completions.create(
            model="llama-3.1-8b-instant", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hello there, friend."
        assert chunks[0].x_groq is not None and chunks[0].x_groq.id.startswith("req_")
        last = chunks[-1]
        assert last.choices[0].finish_reason == "stop"
        assert last.x_groq is not None and last.x_groq.usage is not None
        assert last.x_groq.usage.completion_tokens == 3
        plain = client.chat.completions.create(
            model="llama-3.1-8b-instant", messages=[{"role": "user", "content": "hi"}]
        )
        assert plain.choices[0].message.content == "Hello there, friend."


def test_groq_sdk_transcribes_verbose_json_and_the_fake_checks_the_form() -> None:
    with FakeGroq(GroqConfig(transcripts=["What time is it?"], avg_logprob=-0.3)) as fake:
        client = groq.Groq(api_key="gsk_x", base_url=fake.base_url, max_retries=0)
        tr = client.audio.transcriptions.create(
            file=("audio.wav", wav(1.5)),
            model="whisper-large-v3-turbo",
            response_format="verbose_json",
            language="en",
        )
        assert tr.text == " What time is it?"
        extra = tr.model_extra or {}
        assert extra["duration"] == 1.5 and extra["language"] == "English"
        (seg,) = extra["segments"]
        assert seg["avg_logprob"] == -0.3 and "no_speech_prob" in seg and "compression_ratio" in seg
        with pytest.raises(groq.BadRequestError, match="valid media file"):
            client.audio.transcriptions.create(
                file=("audio.wav", b"not audio"), model="whisper-large-v3-turbo"
            )
        with pytest.raises(groq.NotFoundError, match="does not exist"):
            client.audio.transcriptions.create(file=("audio.wav", wav(0.5)), model="whisper-tiny")


def test_groq_sdk_honours_retry_after_and_sees_a_wrong_key() -> None:
    with FakeGroq(GroqConfig(api_key="gsk_right", retry_after_s=0.3)) as fake:
        bad = groq.Groq(api_key="gsk_wrong", base_url=fake.base_url, max_retries=0)
        with pytest.raises(groq.AuthenticationError, match="Invalid API Key"):
            bad.models.list()
        client = groq.Groq(api_key="gsk_right", base_url=fake.base_url, max_retries=1)
        fake.config.faults.force("429")
        t0 = time.perf_counter()
        client.chat.completions.create(
            model="llama-3.1-8b-instant", messages=[{"role": "user", "content": "hi"}]
        )
        assert time.perf_counter() - t0 >= 0.3, "the SDK waited retry-after"
        fake.config.faults.force("429", "429")
        with pytest.raises(groq.RateLimitError) as info:
            client.chat.completions.create(
                model="llama-3.1-8b-instant", messages=[{"role": "user", "content": "hi"}]
            )
        assert info.value.status_code == 429
        assert [r.status for r in fake.of("/chat/completions")] == [429, 200, 429, 429]


def test_openai_sdk_reads_the_fake_and_a_stream_closed_early_stops_the_fake() -> None:
    with FakeGroq(GroqConfig(replies=["one two three four five six"], token_gap=Latency(50))) as fake:
        client = openai.OpenAI(api_key="x", base_url=fake.openai_base_url, max_retries=0)
        stream = client.chat.completions.create(
            model="llama-3.1-8b-instant",
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        first = [c for _, c in zip(range(3), stream, strict=False)]
        stream.close()
        assert "".join(c.choices[0].delta.content or "" for c in first if c.choices) == "one two"
        deadline = time.monotonic() + 3
        while not fake.requests[0].client_gone and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.requests[0].client_gone and fake.requests[0].tokens_sent < 6


def test_latency_and_fault_plans() -> None:
    import random

    lat = Latency.parse("100:200")
    rng = random.Random(1)
    draws = sorted(lat.sample_s(rng) for _ in range(4000))
    assert 0.095 < draws[2000] < 0.105 and 0.19 < draws[3800] < 0.21
    plan = FaultPlan.parse("429=0.5", seed=3)
    plan.force("500")
    got = [plan.draw() for _ in range(1001)]
    assert got[0] == "500" and 400 < got.count("429") < 600 and plan.injected["500"] == 1
    with pytest.raises(ValueError):
        FaultPlan({"a": 0.7, "b": 0.7})


# -- ElevenLabs ---------------------------------------------------------------------------------------------------
async def _read_all(ws: object) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    try:
        async for raw in ws:  # type: ignore[attr-defined]
            out.append(json.loads(raw))
    except ConnectionClosed:
        pass
    return out


def test_stream_input_buffers_until_flush_ends_with_is_final_and_aligns() -> None:
    async def main() -> None:
        with FakeElevenLabsTts(TtsConfig(ms_per_char=10, chunk_ms=50)) as fake:
            url = f"{fake.url}/v1/text-to-speech/v1/stream-input?model_id=eleven_flash_v2_5&output_format=pcm_16000"
            async with connect(url, additional_headers={"xi-api-key": "k"}) as ws:
                await ws.send(json.dumps({"text": " ", "generation_config": {"chunk_length_schedule": [50]}}))
                await ws.send(json.dumps({"text": "Hello there. "}))
                with pytest.raises(TimeoutError):  # 13 characters < 50: buffered
                    await asyncio.wait_for(ws.recv(), 0.3)
                await ws.send(json.dumps({"text": "How are you? ", "flush": True}))
                first = json.loads(await ws.recv())
                await ws.send(json.dumps({"text": ""}))
                msgs = [first, *await _read_all(ws)]
                assert ws.close_code == 1000
            assert msgs[-1] == {"isFinal": True}
            audio = b"".join(base64.b64decode(str(m["audio"])) for m in msgs if m.get("audio"))
            assert len(audio) == 2 * 16000 * 26 * 10 // 1000  # 10 ms per character, s16le
            chars = "".join("".join(m["alignment"]["chars"]) for m in msgs if m.get("audio"))  # type: ignore[index]
            assert chars == "Hello there. How are you? "
            align = msgs[0]["alignment"]
            assert set(align) == {"chars", "charStartTimesMs", "charsDurationsMs"}  # type: ignore[arg-type]

    run(main())


def test_multi_stream_close_context_stops_its_audio_and_inactivity_times_out() -> None:
    async def main() -> None:
        with FakeElevenLabsTts(TtsConfig(ms_per_char=50, chunk_ms=50, rtf=1.0)) as fake:
            base = f"{fake.url}/v1/text-to-speech/v1/multi-stream-input?output_format=pcm_16000"
            async with connect(base + "&inactivity_timeout=1", additional_headers={"xi-api-key": "k"}) as ws:
                await ws.send(json.dumps({"text": " ", "context_id": "a"}))
                await ws.send(
                    json.dumps(
                        {
                            "text": "A long sentence that takes a while to say. ",
                            "context_id": "a",
                            "flush": True,
                        }
                    )
                )
                first = json.loads(await ws.recv())
                assert first["contextId"] == "a"
                await ws.send(json.dumps({"context_id": "a", "close_context": True}))
                rest = await _read_all(ws)  # then nothing is sent for 1 s: the service gives up
                assert ws.close_code == 1008
            assert {"isFinal": True, "contextId": "a"} in rest
            final_at = rest.index({"isFinal": True, "contextId": "a"})
            assert not any(m.get("audio") for m in rest[final_at:])
            assert rest[-1]["error"] == "input_timeout_exceeded"
            assert "within the timeout of 1.0 seconds" in str(rest[-1]["message"])
            (gen,) = fake.generations
            assert gen.stopped and gen.chunks < 20

    run(main())


def test_the_fake_refuses_a_wrong_key_and_a_garbled_message() -> None:
    async def main() -> None:
        with FakeElevenLabsTts(TtsConfig(api_key="right")) as fake:
            url = f"{fake.url}/v1/text-to-speech/v1/stream-input?output_format=pcm_16000"
            async with connect(url) as ws:
                await ws.send(json.dumps({"text": " ", "xi_api_key": "wrong"}))
                msgs = await _read_all(ws)
                assert msgs[-1]["error"] == "invalid_api_key" and ws.close_code == 1008
            async with connect(url, additional_headers={"xi-api-key": "right"}) as ws:
                await ws.send("{not json")
                msgs = await _read_all(ws)
                assert msgs[-1]["error"] == "invalid_input_message" and ws.close_code == 1008

    run(main())


# -- the nodes, beyond faults -------------------------------------------------------------------------------------
def test_preemptive_llm_starts_on_the_tentative_transcript_and_is_adopted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The chat request goes out when the STT's speculative result comes (a tentative transcript),
    before the turn is confirmed, and the reply uses that one request."""

    async def main() -> None:
        with fakes(monkeypatch) as f:
            async with conversation() as c:
                await c.stream(speech(0.6) + silence(1.0))
                await c.wait("agent_response")
                tentative = c.of_type("tentative_user_transcript")
                assert (
                    tentative
                    and tentative[0]["tentative_user_transcription_event"]["user_transcript"]
                    == "What is the weather like?"
                )
                final_at = c.times[c.types().index("user_transcript")]
            (chat,) = f.groq.of("/chat/completions")
            assert chat.t_start < final_at, "asked before the turn was confirmed"
            assert len(f.groq.of("/transcriptions")) == 1, "the speculative transcription was the final one"
            assert c.of_type("agent_response")[0]["agent_response_event"]["agent_response"] == REPLY

    run(main())


def test_the_warm_socket_is_kept_alive_between_replies(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        with fakes(monkeypatch) as f:
            async with conversation() as c:
                await c.wait("conversation_initiation_metadata")
                await asyncio.sleep(1.3)  # the graph's keepalive period is 0.5 s
                await c.say_text("hi")
                await c.wait("agent_response")
                await c.settle()
            (sock,) = f.tts.connections
            keepalives = [m for m in sock.messages if m.get("text") == "" and m.get("context_id")]
            assert len(keepalives) >= 2
            inits = [m for m in sock.messages if m.get("text") == " "]
            assert all("voice_settings" in m for m in inits)
            first_text = next(i for i, m in enumerate(sock.messages) if str(m.get("text", "")).strip())
            assert first_text > 0, "the reply's context was initialised before the reply existed"

    run(main())


# -- ah doctor ------------------------------------------------------------------------------------------------------
def doctor(env: dict[str, str], graph: str = "graphs/cloud.yaml") -> tuple[int, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GROQ_", "ELEVENLABS_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "ah.cli", "doctor", graph],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_doctor_says_what_is_wrong_one_line_each() -> None:
    with (
        FakeGroq(GroqConfig(api_key="gsk_right")) as g,
        FakeElevenLabsTts(TtsConfig(api_key="xi_right")) as t,
    ):
        good = {
            "GROQ_API_KEY": "gsk_right",
            "GROQ_BASE_URL": g.base_url,
            "ELEVENLABS_API_KEY": "xi_right",
            "ELEVENLABS_BASE_URL": t.url,
        }
        rc, text = doctor(good)
        assert rc == 0 and text.count("✓") == 6 and "✗" not in text, text
        rc, text = doctor({**good, "GROQ_API_KEY": "gsk_wrong", "ELEVENLABS_API_KEY": ""})
        assert rc == 1, text
        lines = [ln for ln in text.splitlines() if "✗" in ln]
        assert len(lines) == 3, text
        assert any(
            ln.strip().startswith("✗ llm (llm.groq)") and "refused the key (HTTP 401)" in ln for ln in lines
        )
        assert any(
            ln.strip().startswith("✗ tts (tts.elevenlabs)") and "ELEVENLABS_API_KEY is not set" in ln
            for ln in lines
        )
        rc, text = doctor({**good, "GROQ_BASE_URL": "http://127.0.0.1:9", "ELEVENLABS_API_KEY": "xi_wrong"})
        assert rc == 1 and "cannot reach http://127.0.0.1:9" in text and "Invalid API key" in text, text


def test_doctor_names_a_model_the_provider_does_not_offer(tmp_path: Path) -> None:
    """The key is accepted but the graph asks for a model the /models list lacks: one line says so."""
    data = yaml.safe_load(GRAPH.read_text())
    data["nodes"]["llm"]["params"]["model"] = "no-such-model"
    graph = tmp_path / "cloud_wrong_model.yaml"
    graph.write_text(yaml.safe_dump(data, sort_keys=False))
    with (
        FakeGroq(GroqConfig(api_key="gsk_right")) as g,
        FakeElevenLabsTts(TtsConfig(api_key="xi_right")) as t,
    ):
        env = {
            "GROQ_API_KEY": "gsk_right",
            "GROQ_BASE_URL": g.base_url,
            "ELEVENLABS_API_KEY": "xi_right",
            "ELEVENLABS_BASE_URL": t.url,
        }
        rc, text = doctor(env, str(graph))
    lines = [ln for ln in text.splitlines() if "✗" in ln]
    assert rc == 1 and len(lines) == 1, text
    assert (
        lines[0].strip().startswith("✗ llm (llm.groq)") and "model 'no-such-model' is not offered" in lines[0]
    )


def test_llm_openai_compatible_in_a_graph(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Any OpenAI-style server by base_url (the fake's /openai/v1 here, as an Ollama would be), no key
    needed unless asked for; when asked for and missing, the session fails at start naming the node."""

    def variant(required: bool, base_url: str) -> Path:
        data = yaml.safe_load(GRAPH.read_text())
        data["graph"] = "cloud_openai"
        data["nodes"]["llm"] = {
            "type": "llm.openai_compatible",
            "params": {"base_url": base_url, "model": "llama-3.1-8b-instant", "api_key_required": required},
        }
        path = tmp_path / f"openai_{required}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    async def main() -> None:
        with fakes(monkeypatch) as f:
            monkeypatch.delenv("OPENAI_API_KEY", raising=False)
            async with conversation(variant(False, f.groq.openai_base_url), "cloud_openai") as c:
                await c.say_text("hi")
                msg = await c.wait("agent_response")
                assert msg["agent_response_event"]["agent_response"] == REPLY
            (chat,) = f.groq.of("/chat/completions")
            assert chat.status == 200
            async with conversation(variant(True, f.groq.openai_base_url), "cloud_openai") as c:
                err = await c.wait("error")
                assert (
                    "'llm'" in err["error_event"]["message"]
                    and "OPENAI_API_KEY" in err["error_event"]["message"]
                )

    run(main())


def test_asr_confidence_is_the_token_weighted_mean_log_probability_and_no_speech_is_dropped() -> None:
    from ah.nodes.stt_groq import recognition_of

    with FakeGroq(GroqConfig(transcripts=["Book a table."], avg_logprob=-0.25)) as fake:
        client = groq.Groq(api_key="gsk_x", base_url=fake.base_url, max_retries=0)
        tr = client.audio.transcriptions.create(
            file=("audio.wav", wav(1.0)), model="whisper-large-v3-turbo", response_format="verbose_json"
        )
    rec = recognition_of(tr, no_speech_threshold=0.6)
    assert rec.text == "Book a table." and rec.confidence == pytest.approx(math.exp(-0.25))
    segments = [
        {"text": " Yes.", "avg_logprob": -0.1, "no_speech_prob": 0.01, "tokens": [1, 2]},
        {"text": " Thank you.", "avg_logprob": -1.5, "no_speech_prob": 0.9, "tokens": [3, 4, 5]},  # silence
        {"text": " Go on.", "avg_logprob": -0.4, "no_speech_prob": 0.2, "tokens": [6, 7, 8, 9]},
    ]
    rec = recognition_of(type("T", (), {"segments": segments, "text": ""})(), no_speech_threshold=0.6)
    assert rec.text == "Yes. Go on."
    assert rec.confidence == pytest.approx(math.exp((-0.1 * 2 - 0.4 * 4) / 6))


def test_llm_prompt_has_the_filled_system_prompt_and_the_history(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = yaml.safe_load(GRAPH.read_text())
    data["graph"] = "cloud_prompt"
    data["nodes"]["client"]["params"] = {"overrides": {"agent.first_message": "llm.first_message"}}
    data["nodes"]["llm"]["params"].update(
        system_prompt="You help {{user_name}}.", first_message="Hi {{user_name}}!"
    )
    path = tmp_path / "prompt.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    seen: list[list[dict[str, object]]] = []

    def reply(messages: list[dict[str, object]]) -> str:
        seen.append(messages)
        return REPLY

    async def main() -> None:
        with fakes(monkeypatch, GroqConfig(reply_fn=reply)):
            async with serving(voice_graphs(path)) as server:
                async with connect(ws_url(server.port, "cloud_prompt")) as ws:
                    init = {
                        "type": "conversation_initiation_client_data",
                        "dynamic_variables": {"user_name": "Ana"},
                    }
                    await ws.send(json.dumps(init))
                    got: list[dict[str, object]] = []

                    async def until(kind: str, n: int) -> None:
                        while sum(m.get("type") == kind for m in got) < n:
                            got.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))

                    await until("agent_response", 1)  # the first message, said without a provider call
                    for n, text in enumerate(["Hello", "And tomorrow?"], start=2):
                        await ws.send(json.dumps({"type": "user_message", "text": text}))
                        await until("agent_response", n)
        first = next(m for m in got if m.get("type") == "agent_response")
        assert first["agent_response_event"]["agent_response"] == "Hi Ana!"  # type: ignore[index]
        assert len(seen) == 2
        assert seen[1] == [
            {"role": "system", "content": "You help Ana."},
            {"role": "assistant", "content": "Hi Ana!"},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": REPLY},
            {"role": "user", "content": "And tomorrow?"},
        ]

    run(main())


def test_tts_stream_input_uses_a_socket_per_reply_opened_ahead(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = yaml.safe_load(GRAPH.read_text())
    data["graph"] = "cloud_single"
    data["nodes"]["tts"]["params"]["endpoint"] = "stream-input"
    path = tmp_path / "single.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    async def main() -> None:
        with fakes(monkeypatch) as f:
            async with conversation(path, "cloud_single") as c:
                for n in (1, 2):
                    await c.say_text("hi")
                    await c.wait("agent_response", n)
                    await c.settle()
                assert not c.errors()
                for n in (1, 2):
                    eid = c.of_type("agent_response")[n - 1]["agent_response_event"]["event_id"]
                    chars = "".join(
                        "".join(a["audio_event"]["alignment"]["chars"])
                        for a in c.of_type("audio")
                        if a["audio_event"]["event_id"] == eid
                    )
                    assert chars.split() == REPLY.split()
            conns = f.tts.connections
            assert all(conn.path.endswith("/stream-input") for conn in conns)
            spoken = [conn for conn in conns if any(str(m.get("text", "")).strip() for m in conn.messages)]
            assert len(spoken) == 2, "one socket per reply"
            # Each reply's socket was open (and initialised) before its reply had text to send.
            for conn in spoken:
                assert conn.messages[0]["text"] == " " and "voice_settings" in conn.messages[0]
                assert "context_id" not in conn.messages[1]
            assert spoken[1].t_open < f.groq.of("/chat/completions")[1].t_start

    run(main())
