"""Property tests of client-message parsing: whatever arrives, ``parse_client_message`` returns a model
or raises ``ProtocolError`` (which the transport answers with an ``error`` event), never anything else."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from ah.nodes.elevenlabs import messages as m
from ah.nodes.elevenlabs.messages import (
    KNOWN_TYPES,
    ProtocolError,
    UserAudioChunk,
    parse_client_message,
)

ERROR_TYPES = {"invalid_message", "missing_fields", "value_error"}
MODELS: dict[str, type[BaseModel]] = {
    name: model
    for model in vars(m).values()
    if isinstance(model, type) and issubclass(model, m._Msg) and model is not m._Msg
    for name in [model.model_fields["type"].annotation.__args__[0]]  # type: ignore[union-attr]
}

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(
    ["type", "text", "event_id", "user_audio_chunk", "tool_call_id", "result", "is_error", "score",
     "dynamic_variables", "conversation_config_override", "source_info", "user_id", "is_approved"]
)  # fmt: skip
messy_objects = st.dictionaries(
    field_names | st.text(max_size=8), json_values | st.sampled_from(KNOWN_TYPES), max_size=6
)


def check(raw: str | bytes) -> Any:
    """Parse; a ProtocolError must carry one of the protocol's error types and a message."""
    try:
        return parse_client_message(raw)
    except ProtocolError as exc:
        assert exc.error_type in ERROR_TYPES
        assert exc.message
        return exc


def test_every_known_type_has_a_model() -> None:
    assert set(MODELS) == set(KNOWN_TYPES)


@given(st.text())
def test_any_text_parses_or_is_a_protocol_error(raw: str) -> None:
    check(raw)


@given(st.binary())
def test_binary_frames_are_a_protocol_error(raw: bytes) -> None:
    result = check(raw)
    assert isinstance(result, ProtocolError) and result.error_type == "invalid_message"


@given(json_values)
def test_any_json_value_parses_or_is_a_protocol_error(value: Any) -> None:
    check(json.dumps(value))


@given(messy_objects)
def test_any_object_with_protocol_like_fields_parses_or_is_a_protocol_error(obj: dict[str, Any]) -> None:
    result = check(json.dumps(obj))
    if not isinstance(result, ProtocolError):
        expected = obj.get("type", "user_audio_chunk")
        assert getattr(result, "type", "user_audio_chunk") == expected


@given(st.binary(max_size=4096))
def test_audio_round_trips(pcm: bytes) -> None:
    msg = parse_client_message(json.dumps({"user_audio_chunk": base64.b64encode(pcm).decode()}))
    assert msg == UserAudioChunk(pcm=pcm)


def _outcome(raw: str) -> Any:
    try:
        return parse_client_message(raw)
    except ProtocolError as exc:
        return (exc.error_type, exc.message)


b64_like = st.text(alphabet='ABCDabcd0189+/=\\"{} ,:\n', max_size=24)


@given(
    st.sampled_from(['{"user_audio_chunk":"', '{"user_audio_chunk": "', '{"user_audio_chunk" :"']),
    st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()) | b64_like,
    st.sampled_from(['"}', '" }', '"}\n', '","type":"pong"}', '","x":1}']),
)
def test_the_audio_fast_path_agrees_with_the_json_parser(head: str, body: str, tail: str) -> None:
    """Chunks written as the official clients write them skip ``json.loads``; whatever the text, the
    outcome (the audio, or the error and its message) is the one the full parser gives."""
    raw = head + body + tail
    fast = _outcome(raw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(m, "_audio_chunk_fast", lambda _raw: None)
        assert fast == _outcome(raw)


@given(st.text(min_size=1).filter(lambda s: not s.isascii() or "=" in s.rstrip("=") or len(s) % 4 == 1))
def test_bad_base64_is_a_value_error(chunk: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(json.dumps({"user_audio_chunk": chunk}))
    assert info.value.error_type == "value_error"


user_messages = st.builds(lambda t: {"type": "user_message", "text": t}, st.text())
contextual = st.builds(lambda t: {"type": "contextual_update", "text": t}, st.text())
pongs = st.builds(lambda i: {"type": "pong", "event_id": i}, st.integers())
tool_results = st.builds(
    lambda i, r, e: {"type": "client_tool_result", "tool_call_id": i, "result": r, "is_error": e},
    st.text(),
    st.text(),
    st.booleans(),
)
feedback = st.builds(
    lambda s, i: {"type": "feedback", "score": s, "event_id": i},
    st.sampled_from(["like", "dislike", None]),
    st.integers(min_value=0) | st.none(),
)
initiations = st.builds(
    lambda dv, override, user: {
        "type": "conversation_initiation_client_data",
        "dynamic_variables": dv,
        "conversation_config_override": override,
        "user_id": user,
    },
    st.dictionaries(
        st.text(max_size=10), st.text() | st.integers() | st.booleans() | st.floats(allow_nan=False)
    ),
    st.dictionaries(st.text(max_size=10), json_values, max_size=3),
    st.text(max_size=10) | st.none(),
)
valid_messages = user_messages | contextual | pongs | tool_results | feedback | initiations


@given(
    valid_messages,
    st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("type",)), json_scalars, max_size=2),
)
def test_valid_messages_round_trip(obj: dict[str, Any], extra: dict[str, Any]) -> None:
    # Extra fields from newer clients are tolerated, never mistaken for the known ones.
    extra = {k: v for k, v in extra.items() if k not in obj and k != "user_audio_chunk"}
    msg = parse_client_message(json.dumps({**obj, **extra}))
    dumped = msg.model_dump()
    for key, value in obj.items():
        assert dumped[key] == value, key


def _required(mtype: str) -> list[str]:
    return [name for name, f in MODELS[mtype].model_fields.items() if f.is_required() and name != "type"]


MINIMAL = {
    "pong": {"event_id": 1},
    "user_message": {"text": "hi"},
    "contextual_update": {"text": "ctx"},
    "client_tool_result": {"tool_call_id": "t1"},
    "mcp_tool_approval_result": {"tool_call_id": "t1"},
}


@pytest.mark.parametrize("mtype", KNOWN_TYPES)
def test_minimal_messages_parse(mtype: str) -> None:
    assert set(_required(mtype)) == set(MINIMAL.get(mtype, {}))
    msg = parse_client_message(json.dumps({"type": mtype, **MINIMAL.get(mtype, {})}))
    assert isinstance(msg, MODELS[mtype])


@settings(max_examples=50)
@given(st.sampled_from([t for t in KNOWN_TYPES if _required(t)]), st.data())
def test_missing_required_fields_are_missing_fields(mtype: str, data: st.DataObject) -> None:
    required = _required(mtype)
    drop = data.draw(st.sets(st.sampled_from(required), min_size=1))
    obj = {"type": mtype, **{k: v for k, v in MINIMAL[mtype].items() if k not in drop}}
    with pytest.raises(ProtocolError) as info:
        parse_client_message(json.dumps(obj))
    assert info.value.error_type == "missing_fields"
    assert mtype in info.value.message and any(k in info.value.message for k in drop)


@pytest.mark.parametrize(
    "raw",
    [
        "[" * 100_000,  # nesting deeper than the parser's stack
        '{"type": "pong", "event_id": ' + "9" * 5000 + "}",  # past Python's int-digits limit
        '{"user_audio_chunk": "' + "A" * 5 + '"}',
        '{"type": "user_message", "text": "\\ud800"}',  # a lone surrogate
        '{"type": "pong", "event_id": NaN}',
        '{"type": "feedback", "score": "meh"}',
        '{"type": 42}',
        "",
    ],
)
def test_edge_cases(raw: str) -> None:
    check(raw)
