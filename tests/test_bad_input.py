"""Bad input, nothing lost: every kind of misbehaving client gets an ``error`` event or a clean close
with a reason, while a healthy session beside it (:func:`side_by_side`) completes its turns."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from ah.server.app import AgentServer, ServerConfig
from tests.server_helpers import (
    INIT,
    STEP_S,
    RawClient,
    error_event,
    open_conversation,
    recv_json,
    recv_until,
    serving,
    side_by_side,
    text_turn,
    voice_graphs,
    voice_variant,
    wait_for,
    ws_url,
)

NOISE = {"ping", "vad_score"}  # what may arrive between a bad message and its error


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No bad client may make the server log an error (a crashed handler, a failed session)."""
    caplog.set_level(logging.INFO)
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def next_error(ws: Any) -> dict[str, Any]:
    msg, seen = await recv_until(ws, "error", skip=NOISE)
    assert not seen, seen
    return error_event(msg)


def session_with(server: AgentServer, key: str, value: str) -> Any:
    return next((s for s in server.sessions.values() if s.attachments["query"].get(key) == value), None)


# -- one bad message: an error event, and the session goes on ------------------------------------------------
BAD_MESSAGES: list[tuple[str, str | bytes | dict[str, Any], str, str]] = [
    ("non_json", "this is not JSON {", "invalid_message", "not valid JSON"),
    ("json_not_an_object", "[1, 2, 3]", "invalid_message", "expected a JSON object, got list"),
    ("binary_frame", b"\x00\xff\x10binary", "invalid_message", "binary frames are not part of this protocol"),
    ("unknown_type", {"type": "make_coffee"}, "invalid_message", "unknown message type 'make_coffee'"),
    ("no_type", {"text": "hello"}, "missing_fields", "no 'type'"),
    ("missing_field", {"type": "user_message"}, "missing_fields", "user_message: text"),
    ("wrong_field_type", {"type": "pong", "event_id": "soon"}, "value_error", "pong: event_id"),
    ("bad_base64", {"user_audio_chunk": "this is not base64!"}, "value_error", "not valid base64"),
    ("audio_not_a_string", {"user_audio_chunk": 1234}, "value_error", "must be a base64 string"),
    ("odd_length_pcm", {"user_audio_chunk": b64(b"\x00" * 801)}, "value_error", "odd number of bytes"),
    ("second_initiation", INIT, "invalid_message", "may be sent only once"),
]


@pytest.mark.parametrize(
    ("raw", "error_type", "text"), [c[1:] for c in BAD_MESSAGES], ids=[c[0] for c in BAD_MESSAGES]
)
def test_a_bad_message_gets_an_error_event_and_the_session_goes_on(
    raw: str | bytes | dict[str, Any], error_type: str, text: str
) -> None:
    async def main() -> None:
        async with serving() as server:

            async def bad() -> None:
                ws = await open_conversation(ws_url(server.port))
                await ws.send(json.dumps(raw) if isinstance(raw, dict) else raw)
                event = await next_error(ws)
                assert event["error_type"] == error_type
                assert text in event["message"]
                assert event["code"] == 1008
                assert "sunny" in await text_turn(ws)  # the same session still answers
                await ws.close()

            await side_by_side(server.port, bad)
            assert server.failed_sessions == 0

    run(main())


def test_odd_length_pcm_is_reported_once_and_its_byte_carried_over() -> None:
    async def main() -> None:
        async with serving() as server:

            async def bad() -> None:
                ws = await open_conversation(ws_url(server.port))
                for _ in range(5):
                    await ws.send(json.dumps({"user_audio_chunk": b64(b"\x00" * 801)}))
                assert "odd number of bytes" in (await next_error(ws))["message"]
                assert "sunny" in await text_turn(ws)  # text_turn fails on any further error
                await ws.close()

            await side_by_side(server.port, bad)

    run(main())


def test_audio_before_the_initiation_message() -> None:
    async def main() -> None:
        async with serving() as server:

            async def bad() -> None:
                async with connect(ws_url(server.port)) as ws:
                    await ws.send(json.dumps({"user_audio_chunk": b64(b"\x00" * 800)}))
                    # The conversation starts with the agent's defaults, metadata first, then the reason.
                    first = await recv_json(ws)
                    assert first["type"] == "conversation_initiation_metadata"
                    event = await next_error(ws)
                    assert event["error_type"] == "invalid_message"
                    assert "user_audio_chunk before conversation_initiation_client_data" in event["message"]
                    # No dynamic variables were sent: the reply says so, and still comes.
                    reply = await text_turn(ws, allow_errors=True)
                    assert "sunny" in reply

            await side_by_side(server.port, bad)

    run(main())


def test_no_initiation_message_at_all_is_closed_with_a_reason(tmp_path: Path) -> None:
    graphs = voice_graphs(voice_variant(tmp_path, "scripted_voice", client={"init_timeout_s": 0.3}))

    async def main() -> None:
        async with serving(graphs) as server:

            async def bad() -> None:
                async with connect(ws_url(server.port)) as ws:
                    with pytest.raises(ConnectionClosed) as info:
                        await recv_json(ws)
                    assert info.value.rcvd is not None
                    assert info.value.rcvd.code == 1008
                    assert info.value.rcvd.reason == "no conversation_initiation_client_data within 0.3 s"

            await side_by_side(server.port, bad)

    run(main())


def test_oversize_message_is_closed_with_1009() -> None:
    async def main() -> None:
        async with serving(config=ServerConfig(port=0, max_message_bytes=64 * 1024)) as server:

            async def bad() -> None:
                ws = await open_conversation(ws_url(server.port, client="big"))
                # Just under the limit is fine ...
                await ws.send(json.dumps({"user_audio_chunk": b64(b"\x00" * 40_000)}))
                # ... just over is not.
                await ws.send(json.dumps({"type": "user_message", "text": "x" * (64 * 1024)}))
                with pytest.raises(ConnectionClosedError) as info:
                    await recv_until(ws, "never", skip=NOISE)
                rcvd = info.value.rcvd
                assert rcvd is not None and rcvd.code == 1009
                assert "exceeds limit of 65536 bytes" in rcvd.reason
                await wait_for(lambda: session_with(server, "client", "big") is None, what="session end")

            await side_by_side(server.port, bad)
            assert server.failed_sessions == 0

    run(main())


def test_a_burst_of_1000_messages_loses_nothing() -> None:
    async def main() -> None:
        async with serving() as server:

            async def bad() -> None:
                ws = await open_conversation(ws_url(server.port))
                silence = json.dumps({"user_audio_chunk": b64(b"\x00" * 800)})  # 25 ms
                activity = json.dumps({"type": "user_activity"})
                for _ in range(1000):
                    await ws.send(activity)
                    await ws.send(silence)
                assert "sunny" in await text_turn(ws)
                # A burst of bad ones: every one of them answered, in order, none dropped.
                for i in range(1000):
                    await ws.send(json.dumps({"type": f"bogus_{i}"}))
                for i in range(1000):
                    assert f"'bogus_{i}'" in (await next_error(ws))["message"]
                assert "not much more" in await text_turn(ws)
                await ws.close()

            await side_by_side(server.port, bad)

    run(main())


# -- a client that stops reading -----------------------------------------------------------------------------
async def _stuck_client(server: AgentServer) -> tuple[RawClient, Any]:
    """A client that sends a voice turn and then reads nothing; the server's socket buffer is made small
    (as on a slow link) so its writes soon block."""
    client = await RawClient.open(ws_url(server.port, client="stuck"))
    await wait_for(lambda: session_with(server, "client", "stuck") is not None, what="the session")
    session = session_with(server, "client", "stuck")
    sock = session.attachments["connection"].ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    await client.send_json({**INIT, "conversation_config_override": {}})  # with audio
    await client.send_json({"type": "user_message", "text": "What is the weather like?"})
    return client, session


def _impatient(tmp_path: Path) -> Any:
    # Seconds of agent audio go out at once, and a send blocked for half a second gives up.
    return voice_graphs(
        voice_variant(tmp_path, "scripted_voice", client={"send_timeout_s": 0.5}, out={"audio_lead_ms": 2000})
    )


def test_a_client_that_stops_reading_is_closed_with_a_reason(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(_impatient(tmp_path)) as server:

            async def bad() -> None:
                client, session = await _stuck_client(server)
                state = session.attachments["elevenlabs.protocol"]
                await wait_for(lambda: state.closing, what="the server to give up on the client")
                # The client reads at last: everything sent before, then the close frame and its reason.
                close = await client.read_to_close()
                assert close is not None and close.code == 1008
                assert close.reason == "client is not reading (a send was blocked for 0.5 s)"
                assert client.texts[0]["type"] == "conversation_initiation_metadata"
                assert any(m["type"] == "audio" for m in client.texts)
                await wait_for(lambda: session_with(server, "client", "stuck") is None, what="session end")

            await side_by_side(server.port, bad)
            assert server.failed_sessions == 0

    run(main())


def test_a_client_that_never_reads_again_is_cut_off(tmp_path: Path) -> None:
    async def main() -> None:
        config = ServerConfig(port=0, close_timeout_s=0.5)
        async with serving(_impatient(tmp_path), config) as server:

            async def bad() -> None:
                client, _ = await _stuck_client(server)
                # It does not even read the close frame: after close_timeout_s the connection is dropped
                # and the session ends (websockets alone would wait on the full buffer for ever).
                await wait_for(lambda: session_with(server, "client", "stuck") is None, what="session end")
                assert await client.read_to_close() is None  # the stream just ends: no close frame came

            await side_by_side(server.port, bad)
            assert server.failed_sessions == 0

    run(main())


def test_an_abrupt_close_mid_turn_ends_only_that_session() -> None:
    async def main() -> None:
        async with serving() as server:

            async def bad() -> None:
                ws = await open_conversation(
                    ws_url(server.port, client="abrupt"), {**INIT, "conversation_config_override": {}}
                )
                await ws.send(json.dumps({"type": "user_message", "text": "What is the weather like?"}))
                await recv_until(ws, "audio", skip={"ping", "vad_score", "agent_chat_response_part"})
                ws.transport.abort()  # no close frame: the TCP connection just goes, mid-reply
                await wait_for(
                    lambda: session_with(server, "client", "abrupt") is None, STEP_S, "session end"
                )

            await side_by_side(server.port, bad)
            assert server.failed_sessions == 0

    run(main())
