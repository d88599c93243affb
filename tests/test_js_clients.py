"""The official JavaScript client, ``@elevenlabs/client`` 1.25.0, unchanged, in Node against the server.

* ``Conversation.startSession`` (the Node entry) in a text-only session: ``tests/js/text_session.mjs``.
* ``WebSocketConnection`` (the class the browser entry streams audio through) with PCM16 in 25 ms
  chunks in real time, a barge-in during the agent's reply: ``tests/js/voice_connection.mjs``.

Node 20 needs ``--experimental-websocket`` (the helper passes it). The browser runs are in
``test_browser.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ah.server.app import AgentServer
from tests.js_harness import (
    AGENT,
    LINE_1,
    LINE_2,
    MS_PER_CHAR,
    REPLY_1,
    REPLY_2,
    SR,
    run_node,
    server_in_thread,
)


@pytest.fixture(scope="module")
def server() -> Iterator[AgentServer]:
    with server_in_thread() as s:
        yield s


def test_text_only_session(server: AgentServer) -> None:
    events: list[dict[str, Any]] = run_node("text_session.mjs", server.port, AGENT, LINE_1)
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "done", kinds

    # Metadata: the client connected and learnt the conversation id from conversation_initiation_metadata.
    statuses = [e["status"] for e in events if e["event"] == "status"]
    assert statuses[:2] == ["connecting", "connected"], statuses
    (connect,) = [e for e in events if e["event"] == "connect"]
    assert connect["conversation_id"].startswith("conv_")

    # The reply streamed as start / delta... / stop under one event id, then arrived whole.
    parts = [e for e in events if e["event"] == "part"]
    assert [p["type"] for p in parts[:1] + parts[-1:]] == ["start", "stop"], parts
    assert {p["event_id"] for p in parts} == {parts[0]["event_id"]}
    messages = [e for e in events if e["event"] == "message"]
    assert [(m["source"], m["message"]) for m in messages] == [("ai", REPLY_1)]  # {{user_name}} filled in
    assert "".join(p["text"] for p in parts if p["type"] == "delta") == REPLY_1
    assert messages[0]["event_id"] == parts[0]["event_id"]
    assert kinds.index("message") > max(i for i, k in enumerate(kinds) if k == "part")

    # Text only: not one audio message. Pings arrive (and the client answers them).
    incoming = [e["type"] for e in events if e["event"] == "incoming"]
    assert "audio" not in incoming
    assert "ping" in kinds
    assert not [e for e in events if e["event"] in ("error", "interruption")], events
    assert [e["reason"] for e in events if e["event"] == "disconnect"] == ["user"]
    assert server.failed_sessions == 0


def test_websocket_connection_streams_audio_and_barges_in(server: AgentServer) -> None:
    seen: dict[str, Any] = run_node("voice_connection.mjs", server.port, AGENT)
    assert seen["failure"] is None, seen
    assert seen["conversation_id"].startswith("conv_")
    pcm_16k = {"format": "pcm", "sampleRate": SR}
    assert seen["input_format"] == pcm_16k and seen["output_format"] == pcm_16k
    assert seen["chunk_bytes"] == 800 and seen["chunks_sent"] > 100  # 25 ms chunks in real time, ~4 s
    assert seen["pongs"] >= 1
    assert seen["errors"] == []

    # Transcripts and replies, in order: one per speech burst.
    assert [t["user_transcript"] for t in seen["user_transcripts"]] == [LINE_1, LINE_2]
    assert [r["agent_response"] for r in seen["agent_responses"]] == [REPLY_1, REPLY_2]
    first, second = (r["event_id"] for r in seen["agent_responses"])
    t1, t2 = (t["event_id"] for t in seen["user_transcripts"])
    assert t1 < first < t2 < second

    # Audio of both replies; the first was cut short by the barge-in.
    audio = {int(k): v for k, v in seen["audio"].items()}
    assert set(audio) == {first, second}, audio
    full_first = len(REPLY_1) * MS_PER_CHAR * SR * 2 // 1000
    assert 0 < audio[first]["bytes"] < full_first
    assert audio[second]["bytes"] > 0

    # The interruption: reported for the reply being played, soon after the user started talking over
    # it, and not one more chunk of that reply afterwards (the client would play it).
    assert [i["event_id"] for i in seen["interruptions"]] == [first]
    cut = seen["interruptions"][0]["t"]
    assert seen["barge_in_at_ms"] < cut < seen["barge_in_at_ms"] + 1500
    assert seen["audio_after_interruption"] == 0
    assert audio[first]["last_ms"] <= cut
    assert audio[second]["first_ms"] > cut

    # What the listener had heard of the cut reply replaces it.
    (correction,) = seen["corrections"]
    assert correction["event_id"] == first and correction["original_agent_response"] == REPLY_1
    heard = correction["corrected_agent_response"]
    assert heard and REPLY_1.startswith(heard) and len(heard) < len(REPLY_1)
    assert server.failed_sessions == 0
