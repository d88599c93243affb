"""Provider faults, end to end: the real server, the ElevenLabs Agents protocol, the real ``groq`` SDK and
``websockets`` client in the nodes, and the fake Groq and ElevenLabs servers misbehaving on cue.

For every fault the session lives on: the call is retried where that is safe (and no speech is said
twice), or the client gets an ``error`` event; either way the next turn is answered normally, and no
turn hangs (every provider call has a deadline; the graph's are short, tests/graphs/cloud_fakes.yaml).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.cloud_helpers import REPLY, Conversation, conversation, fakes, run, silence, speech
from tests.fakes.elevenlabs_tts import TtsConfig
from tests.fakes.groq import GroqConfig

NEXT = "Tell me more."


async def typed_turn(c: Conversation, n: int, text: str = "What is the weather like?") -> str:
    """The n-th typed turn of the conversation; returns the agent's response text."""
    await c.say_text(text)
    msg = await c.wait("agent_response", n, within=15)
    return str(msg["agent_response_event"]["agent_response"])


async def next_turn_is_normal(c: Conversation, n: int) -> None:
    assert await typed_turn(c, n, NEXT) == REPLY
    await c.settle()
    event_id = c.of_type("agent_response")[n - 1]["agent_response_event"]["event_id"]
    assert len(c.audio(event_id)) > 0, "the next reply is spoken"


# -- the happy path -----------------------------------------------------------------------------------------------
def test_a_typed_turn_is_answered_and_spoken_with_alignment(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        with fakes(monkeypatch) as f:
            async with conversation() as c:
                assert await typed_turn(c, 1) == REPLY
                await c.settle()
                audio = c.of_type("audio")
                assert audio and all(a["audio_event"]["event_id"] == 1 for a in audio)
                # The service's character timings reach the client: the reply's characters, in order.
                chars = "".join("".join(a["audio_event"]["alignment"]["chars"]) for a in audio)
                assert chars.split() == REPLY.split()
                assert not c.errors()
            (chat,) = f.groq.of("/chat/completions")
            assert chat.status == 200 and chat.model == "llama-3.1-8b-instant"
            # One socket, opened at session start; the reply had its own context, flushed per sentence.
            (sock,) = f.tts.connections
            assert "/multi-stream-input" in sock.path
            texts = [g.text for g in f.tts.generations]
            assert texts == ["Sure thing. ", "It is sunny today, with a light breeze from the west. "]

    run(main())


def test_a_reply_in_markdown_is_said_as_plain_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """Models write markdown and line breaks; a voice says neither: the reply reaches the client and the
    TTS as plain words, single-spaced (the same rule as llm.local's)."""
    reply = "**Sure** thing.\n\n# It is `sunny`   today,\n*really*."
    said = "Sure thing. It is sunny today, really."

    async def main() -> None:
        groq = GroqConfig(replies=[reply], transcripts=["What is the weather like?"])
        with fakes(monkeypatch, groq=groq) as f:
            async with conversation() as c:
                assert await typed_turn(c, 1) == said
                await c.settle()
                assert not c.errors()
            assert "".join(g.text for g in f.tts.generations).split() == said.split()

    run(main())


def test_a_missing_key_fails_at_graph_start_naming_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        with fakes(monkeypatch):
            monkeypatch.delenv("ELEVENLABS_API_KEY")
            async with conversation() as c:
                await c.wait("error")
                (err,) = c.errors()
                assert "'tts'" in err["message"] and "ELEVENLABS_API_KEY" in err["message"], err
                assert c.ws.close_code in (1011, None)

    run(main())


# -- LLM faults ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("faults", "requests"),
    [
        (("429",), 2),  # the SDK waits retry-after and asks again
        (("500",), 2),  # the SDK retries a 5xx
        (("503",), 2),
        (("timeout",), 2),  # no first token by the deadline: nothing said, so asked again
    ],
)
def test_llm_faults_before_the_first_token_are_retried(
    monkeypatch: pytest.MonkeyPatch, faults: tuple[str, ...], requests: int
) -> None:
    async def main() -> None:
        with fakes(monkeypatch) as f:
            f.groq.config.faults.force(*faults)
            async with conversation() as c:
                assert await typed_turn(c, 1) == REPLY
                assert not c.errors(), c.errors()
                await next_turn_is_normal(c, 2)
            chats = f.groq.of("/chat/completions")
            assert len(chats) == requests + 1
            assert chats[0].fault == faults[0]

    run(main())


@pytest.mark.parametrize("fault", ["disconnect", "malformed", "stream_error"])
def test_llm_faults_mid_stream_end_the_reply_with_an_error_event(
    monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """Text already went out, so asking again would repeat it: the reply stops, the client is told."""

    async def main() -> None:
        with fakes(monkeypatch) as f:
            f.groq.config.faults.force(fault)
            async with conversation() as c:
                said = await typed_turn(c, 1)
                assert said and REPLY.startswith(said.rstrip()) and said != REPLY, said
                (err,) = c.errors()
                assert err["error_type"] == "llm_error" and "llm" in err["message"], err
                await next_turn_is_normal(c, 2)
            assert len(f.groq.of("/chat/completions")) == 2

    run(main())


def test_llm_rate_limit_beyond_the_retries_is_an_error_event(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        with fakes(monkeypatch) as f:
            f.groq.config.faults.force("429", "429")  # the graph allows one SDK retry
            async with conversation() as c:
                assert await typed_turn(c, 1) == ""
                (err,) = c.errors()
                assert "RateLimitError" in err["message"] and "429" in err["message"], err
                await next_turn_is_normal(c, 2)

    run(main())


# -- TTS faults ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["error", "timeout"])
def test_tts_faults_before_any_audio_are_retried_on_a_new_socket(
    monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    async def main() -> None:
        with fakes(monkeypatch) as f:
            f.tts.config.faults.force(fault)
            async with conversation() as c:
                assert await typed_turn(c, 1) == REPLY
                await c.wait("audio", within=10)  # after the first socket's deadline (2 s)
                await c.settle()
                assert not c.errors(), c.errors()
                chars = "".join("".join(a["audio_event"]["alignment"]["chars"]) for a in c.of_type("audio"))
                assert chars.split() == REPLY.split(), "the whole reply is spoken, once"
                await next_turn_is_normal(c, 2)
            assert len(f.tts.connections) == 2

    run(main())


def test_tts_disconnect_mid_reply_is_an_error_event_and_the_next_reply_reconnects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        with fakes(monkeypatch) as f:
            f.tts.config.faults.force("disconnect")
            async with conversation() as c:
                assert await typed_turn(c, 1) == REPLY
                await c.wait("error")
                (err,) = c.errors()
                assert err["error_type"] == "tts_error" and "'tts'" not in err["message"], err
                assert err["message"].startswith("tts:"), err
                heard = "".join("".join(a["audio_event"]["alignment"]["chars"]) for a in c.of_type("audio"))
                assert heard and REPLY.startswith(heard), "what was spoken is not spoken again"
                await next_turn_is_normal(c, 2)
            # The broken socket was dropped: the next reply was spoken on a new one.
            assert len(f.tts.connections) >= 2
            assert f.tts.connections[0].close_code == 1006
            assert any(g.text == "Sure thing. " for g in f.tts.generations[1:])

    run(main())


def test_tts_malformed_frame_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        with fakes(monkeypatch) as f:
            f.tts.config.faults.force("malformed")
            async with conversation() as c:
                assert await typed_turn(c, 1) == REPLY
                await c.settle()
                assert not c.errors()
                chars = "".join("".join(a["audio_event"]["alignment"]["chars"]) for a in c.of_type("audio"))
                assert chars.split() == REPLY.split()
            assert len(f.tts.connections) == 1

    run(main())


# -- STT faults ---------------------------------------------------------------------------------------------------
async def spoken_turn(c: Conversation, n: int) -> None:
    await c.stream(speech(0.6) + silence(0.9))


@pytest.mark.parametrize("fault", ["429", "500"])
def test_stt_faults_are_retried_by_the_sdk(monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    async def main() -> None:
        with fakes(monkeypatch) as f:
            f.groq.config.faults.force(fault)
            async with conversation() as c:
                await spoken_turn(c, 1)
                tr = await c.wait("user_transcript")
                assert tr["user_transcription_event"]["user_transcript"] == "What is the weather like?"
                await c.wait("agent_response")
                assert not c.errors()
            assert [r.fault for r in f.groq.of("/transcriptions")] == [fault, None]

    run(main())


@pytest.mark.parametrize("fault", ["timeout", "malformed", "disconnect"])
def test_stt_failure_is_an_error_event_and_the_next_utterance_is_heard(
    monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    async def main() -> None:
        with fakes(monkeypatch, GroqConfig(replies=[REPLY], transcripts=["Hello?", NEXT])) as f:
            # timeout: held past the node's 2 s deadline; a garbled body is not retried by the SDK; a cut
            # connection is, so it is cut on both of the SDK's tries.
            f.groq.config.faults.force(*([fault] * (2 if fault == "disconnect" else 1)))
            async with conversation() as c:
                await spoken_turn(c, 1)
                await c.wait("error", within=8)
                (err,) = c.errors()
                assert err["error_type"] == "stt_error" and err["message"].startswith("stt:"), err
                assert not c.of_type("user_transcript")
                await spoken_turn(c, 2)
                tr = await c.wait("user_transcript")
                assert tr["user_transcription_event"]["user_transcript"] in ("Hello?", NEXT)
                assert (await c.wait("agent_response"))["agent_response_event"]["agent_response"] == REPLY

    run(main())


# -- barge-in ---------------------------------------------------------------------------------------------------------
def test_barge_in_closes_the_context_and_the_correction_says_what_was_heard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The service's character timings tell protocol_out what the listener heard when the user cut in."""

    async def main() -> None:
        with fakes(monkeypatch, tts=TtsConfig(ms_per_char=60, rtf=1.5)) as f:
            async with conversation() as c:
                await c.say_text("What is the weather like?")
                await c.wait("audio")
                await asyncio.sleep(1.2)  # a good part of the first sentence has been heard
                await c.stream(speech(0.6) + silence(0.2))
                await c.wait("interruption")
                corr = (await c.wait("agent_response_correction"))["agent_response_correction_event"]
                heard = corr["corrected_agent_response"]
                assert heard and REPLY.startswith(heard) and len(heard) < len(REPLY), corr
                # The close travels on its own (the reply's worker is cancelled, then frees its context):
                # it may land just after the correction.
                for _ in range(50):
                    closes = [m for m in f.tts.connections[0].messages if m.get("close_context")]
                    if closes:
                        break
                    await asyncio.sleep(0.05)
            assert closes, "the interrupted reply's context was closed"
            stopped = [g for g in f.tts.generations if g.stopped]
            assert stopped, "the fake stopped making audio for it"

    run(main())


def test_tts_refused_connections_are_an_error_event_and_a_later_reply_connects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        with fakes(monkeypatch) as f:
            # The warm-up, the reply's connection and its one retry are all refused (HTTP 503).
            f.tts.config.connect_faults.force("reject", "reject", "reject")
            async with conversation() as c:
                await asyncio.sleep(0.3)
                assert await typed_turn(c, 1) == REPLY
                err = (await c.wait("error"))["error_event"]
                assert err["error_type"] == "tts_error" and "HTTP 503" in err["message"], err
                assert not c.of_type("audio")
                await next_turn_is_normal(c, 2)

    run(main())
