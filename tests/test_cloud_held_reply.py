"""The held (preemptive) reply of graphs/cloud.yaml, end to end through the real server and the fakes.

``stt.groq`` asks early (``early_ms``) and sends a tentative transcript; the turn policy starts the
reply on it in a paused scope; ``llm.groq`` answers it with one request (its own ``preemptive`` stream
is the same one); ``tts.elevenlabs``, whose text input runs ahead of a paused scope, synthesises it;
protocol_out holds the audio until the end of the turn releases it. If the user goes on instead, the
held reply is dropped: its context is closed and nothing of it is heard.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.cloud_helpers import REPLY, ROOT, conversation, fakes, run, silence, speech
from tests.fakes.groq import GroqConfig

GRAPH = ROOT / "tests" / "graphs" / "cloud_fakes_held.yaml"
AGENT = "cloud_fakes_held"
ASKED = "What is the weather like?"


def test_the_held_reply_is_synthesised_before_the_turn_ends_and_heard_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        with fakes(monkeypatch) as f:
            async with conversation(GRAPH, AGENT) as c:
                await c.stream(speech(0.8) + silence(1.0))
                tr = await c.wait("user_transcript")
                t_final = c.times[c.received.index(tr)]
                await c.wait("agent_response")
                await c.settle()
                assert tr["user_transcription_event"]["user_transcript"] == ASKED
                audio_at = [t for m, t in zip(c.received, c.times, strict=True) if m.get("type") == "audio"]
                assert audio_at and min(audio_at) >= t_final, (
                    "nothing of the reply is heard before the turn ends"
                )
                assert c.of_type("agent_response")[0]["agent_response_event"]["agent_response"] == REPLY
                assert not c.errors()
            # One transcription, one chat request: the turn policy's held reply and llm.groq's own
            # preemptive stream are the same request.
            assert len(f.groq.of("/transcriptions")) == 1
            (chat,) = f.groq.of("/chat/completions")
            assert chat.t_start < t_final
            # The TTS made the first sentence's audio while the reply was held.
            first = f.tts.generations[0]
            assert first.text == "Sure thing. "
            assert first.t_first_audio is not None and first.t_first_audio < t_final

    run(main())


def test_a_held_reply_is_dropped_unheard_when_the_user_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        prompts: list[list[dict[str, str]]] = []

        def reply(messages: list[dict[str, str]]) -> str:
            prompts.append(messages)
            return REPLY

        groq = GroqConfig(reply_fn=reply, transcripts=["What is", ASKED])
        with fakes(monkeypatch, groq=groq) as f:
            async with conversation(GRAPH, AGENT) as c:
                # A pause longer than the VAD's but shorter than the end-of-turn silence: the held
                # reply to "What is" starts, and the user goes on.
                await c.stream(speech(0.6) + silence(0.45))
                await asyncio.sleep(0.1)
                held = len(f.tts.generations)
                await c.stream(speech(0.6) + silence(1.0))
                await c.wait("agent_response")
                await c.settle()
                (tr,) = c.of_type("user_transcript")
                assert tr["user_transcription_event"]["user_transcript"] == ASKED
                assert len(c.of_type("agent_response")) == 1
                t_final = c.times[c.received.index(tr)]
                audio = [(m, t) for m, t in zip(c.received, c.times, strict=True) if m.get("type") == "audio"]
                assert audio and all(t >= t_final for _, t in audio), "the dropped reply was never heard"
                assert len({m["audio_event"]["event_id"] for m, _ in audio}) == 1
            chats = f.groq.of("/chat/completions")
            assert len(chats) == 2, "the held reply's request, then the turn's"
            # The dropped turn and its unheard reply are not in the history the real turn is asked with.
            users = [m["content"] for m in prompts[-1] if m["role"] == "user"]
            assert users == [ASKED], prompts[-1]
            assert not [m for m in prompts[-1] if m["role"] == "assistant"], prompts[-1]
            assert held >= 1, "the held reply was being synthesised"
            closes = [m for m in f.tts.connections[0].messages if m.get("close_context")]
            assert closes, "the dropped reply's context was closed"

    run(main())
