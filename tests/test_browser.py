"""Real voice sessions in a real browser: headless Chromium (Debian's ``chromium``) with a fake
microphone that loops a WAV of speech bursts separated by silence, so the second burst talks over the
agent's first reply.

* The official ``@elevenlabs/client`` 1.25.0, browser build, unchanged: ``tests/js/official_browser.mjs``
  opens ``tests/js/official_client.html``, which runs ``Conversation.startSession`` over WebSocket.
* Our talk page (``GET /``): ``tests/js/talk_page.mjs`` presses Start and reads what the page shows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ah.server.app import AgentServer
from tests.js_harness import (
    AGENT,
    LINE_1,
    LINE_2,
    REPLY_1,
    REPLY_2,
    chromium,
    microphone_wav,
    run_node,
    server_in_thread,
)


@pytest.fixture(scope="module")
def server() -> Iterator[AgentServer]:
    with server_in_thread() as s:
        yield s


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return microphone_wav(tmp_path_factory.mktemp("mic") / "speech_bursts.wav")


def test_official_client_voice_session_in_chromium(server: AgentServer, wav: Path) -> None:
    seen: dict[str, Any] = run_node(
        "official_browser.mjs", server.port, wav, AGENT, 15000, browser=chromium()
    )
    events, incoming = seen["events"], seen["incoming"]
    kinds = [e["event"] for e in events]
    assert "start_failed" not in kinds, (events, seen["console"])
    assert not [e for e in events if e["event"] == "error"], events

    # Metadata: connected over WebSocket (not WebRTC) with our conversation id.
    (connect,) = [e for e in events if e["event"] == "connect"]
    assert connect["conversation_id"].startswith("conv_")
    assert [e["status"] for e in events if e["event"] == "status"][:2] == ["connecting", "connected"]

    # Transcripts of the microphone's bursts and the agent's replies, in order.
    messages = [(e["source"], e["message"]) for e in events if e["event"] == "message"]
    assert messages[:4] == [("user", LINE_1), ("ai", REPLY_1), ("user", LINE_2), ("ai", REPLY_2)], messages
    first, second = (e["event_id"] for e in events if e["event"] == "message" and e["source"] == "ai")

    # Audio: handed to the app (onAudio) and played (the client's mode went to "speaking").
    assert sum(1 for k in kinds if k == "audio") > 10
    modes = [(e["t_ms"], e["mode"]) for e in events if e["event"] == "mode"]
    assert "speaking" in [m for _, m in modes]

    # The barge-in interrupted the first reply ...
    (cut,) = [e for e in events if e["event"] == "interruption"]
    assert cut["event_id"] == first
    # ... after which the server sent no more of its audio, and the client stopped playing it: its mode
    # stayed "listening" until the next reply's audio arrived.
    (cut_at,) = [i for i, e in enumerate(incoming) if e["type"] == "interruption"]
    audio_ids = [(i, e["event_id"]) for i, e in enumerate(incoming) if e["type"] == "audio"]
    assert any(eid == first for i, eid in audio_ids if i < cut_at)
    assert all(eid != first for i, eid in audio_ids if i > cut_at), incoming[cut_at:]
    next_audio_t = min(
        e["t_ms"] for e in incoming[cut_at:] if e["type"] == "audio" and e["event_id"] == second
    )
    between = [m for t, m in modes if cut["t_ms"] <= t < next_audio_t]
    assert between == ["listening"], modes
    assert any(e["type"] == "agent_response_correction" for e in incoming[cut_at:])
    assert server.failed_sessions == 0


def test_talk_page_in_chromium(server: AgentServer, wav: Path, tmp_path: Path) -> None:
    shot = tmp_path / "talk.png"
    page: dict[str, Any] = run_node("talk_page.mjs", server.port, wav, shot, AGENT, 15000, browser=chromium())
    assert page["agents"] == [AGENT]  # from GET /agents
    assert not [c for c in page["console"] if c.startswith(("error", "pageerror"))], page["console"]
    items = page["items"]
    assert not [i for i in items if "error" in i["cls"].split()], items
    assert page["conversation_id"].startswith("conv_")

    users = [i for i in items if "user" in i["cls"].split()]
    agents = [i for i in items if "agent" in i["cls"].split()]
    assert [u["text"] for u in users][:2] == [LINE_1, LINE_2], items
    assert len(agents) >= 2, items

    # The first reply: streamed text, its latency, then the barge-in cut it (what was not heard is
    # struck through) and a marker shows where.
    one, two = agents[0], agents[1]
    assert one["text"] == REPLY_1 and one["unheard"] and REPLY_1.endswith(one["unheard"])
    assert "interrupted" in one["cls"].split() and "interrupted" in one["badges"]
    kinds = [i["cls"] for i in items]
    marker = kinds.index("marker interruption")
    assert items.index(one) < marker < items.index(users[1])

    # The second reply, whole, with a latency figure of its own.
    assert two["text"] == REPLY_2 and "interrupted" not in two["cls"].split()
    for reply in (one, two):
        latency = [b for b in reply["badges"] if re.fullmatch(r"\d+ ms", b)]
        assert len(latency) == 1, reply
        # End of speech -> first audio: VAD silence (160 ms) + endpointing (300 ms) + LLM + TTS.
        assert 200 < int(latency[0].split()[0]) < 2000, reply
    assert page["stats"]["cuts"] == "1" and page["stats"]["replies"] == "2"
    assert re.fullmatch(r"\d+ ms", page["stats"]["medlat"])

    # Stop ends the conversation and re-enables Start.
    assert page["after_stop"] == {"status": "idle", "start_enabled": True, "last_line": "conversation ended"}
    assert shot.stat().st_size > 10_000
    assert server.failed_sessions == 0
