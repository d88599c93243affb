"""Client → server messages of the ElevenLabs Agents WebSocket protocol, one pydantic model each.

Parsing never raises anything but :class:`ProtocolError`, whose ``error_type`` is one of the
protocol's own (``invalid_message``, ``missing_fields``, ``value_error``), so the transport can
answer every bad message with an ``error`` event and carry on. See
``shared/reference/elevenlabs-agents-ws.md`` §3 for the shapes and the official clients' quirks.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class ProtocolError(Exception):
    def __init__(self, error_type: str, message: str) -> None:
        self.error_type = error_type
        self.message = message
        super().__init__(message)


class _Msg(BaseModel):
    # Newer clients add fields; tolerate them rather than break a working app.
    model_config = ConfigDict(extra="allow")


class ConversationInitiation(_Msg):
    type: Literal["conversation_initiation_client_data"]
    conversation_config_override: dict[str, Any] = Field(default_factory=dict)
    custom_llm_extra_body: dict[str, Any] = Field(default_factory=dict)
    dynamic_variables: dict[str, str | int | float | bool] = Field(default_factory=dict)
    user_id: str | None = None
    source_info: dict[str, Any] = Field(default_factory=dict)

    @property
    def text_only(self) -> bool:
        override = self.conversation_config_override
        conv = override.get("conversation") if isinstance(override.get("conversation"), dict) else {}
        # The Python SDK puts text_only at the top level of the override; JS puts it under conversation.
        return bool(override.get("text_only") or (conv or {}).get("text_only"))


class EnclaveSetup(_Msg):
    type: Literal["enclave_setup_config"]


class Pong(_Msg):
    type: Literal["pong"]
    event_id: int


class UserMessage(_Msg):
    type: Literal["user_message"]
    text: str


class UserActivity(_Msg):
    type: Literal["user_activity"]


class ContextualUpdate(_Msg):
    type: Literal["contextual_update"]
    text: str


class ClientToolResult(_Msg):
    type: Literal["client_tool_result"]
    tool_call_id: str
    result: str = ""
    is_error: bool = False


class Feedback(_Msg):
    type: Literal["feedback"]
    score: Literal["like", "dislike"] | None = None
    event_id: int | None = None


class MultimodalMessage(_Msg):
    type: Literal["multimodal_message"]
    text: dict[str, Any] | None = None


class McpToolApproval(_Msg):
    type: Literal["mcp_tool_approval_result"]
    tool_call_id: str
    is_approved: bool = False


# The typed messages are listed here once: the parser, KNOWN_TYPES and ClientMessage all follow it.
_Typed = (
    ConversationInitiation
    | EnclaveSetup
    | Pong
    | UserMessage
    | UserActivity
    | ContextualUpdate
    | ClientToolResult
    | Feedback
    | MultimodalMessage
    | McpToolApproval
)
TypedMessage = Annotated[_Typed, Field(discriminator="type")]
_typed: TypeAdapter[Any] = TypeAdapter(TypedMessage)
#: Every message ``type`` a client may send, from the models' own ``type`` literals.
KNOWN_TYPES: tuple[str, ...] = tuple(
    get_args(model.model_fields["type"].annotation)[0] for model in get_args(_Typed)
)


class UserAudioChunk(BaseModel):
    """``{"user_audio_chunk": b64}`` — the one message without a ``type``."""

    pcm: bytes


ClientMessage = _Typed | UserAudioChunk


#: How the official clients write an audio chunk: JS ``JSON.stringify`` (no space), Python ``json.dumps``.
_CHUNK_HEADS = ('{"user_audio_chunk":"', '{"user_audio_chunk": "')


def _audio_chunk_fast(raw: str) -> UserAudioChunk | None:
    """The chunk of a message written exactly as the official clients write it, without a JSON parse.

    Audio is 25-40 messages a second per session; ``json.loads`` and a model for each was a tenth of
    the event loop at 100 sessions (experiments/capacity.py). Only the exact shape qualifies: anything
    else (other keys, escapes, spaces, bad base64) returns None and takes the full parser, so what is
    accepted, and every error, is the same either way (tests/test_protocol_parser.py checks it)."""
    if not raw.endswith('"}'):
        return None
    for head in _CHUNK_HEADS:
        if raw.startswith(head):
            try:  # strict: the base64 alphabet only, so a quote or backslash (JSON syntax) fails here
                return UserAudioChunk.model_construct(
                    pcm=binascii.a2b_base64(raw[len(head) : -2], strict_mode=True)
                )
            except (binascii.Error, ValueError):
                return None
    return None


def parse_client_message(raw: str | bytes) -> ClientMessage:
    """Parse one WebSocket message from a client, or raise :class:`ProtocolError` saying what was wrong."""
    if isinstance(raw, bytes):
        raise ProtocolError("invalid_message", "binary frames are not part of this protocol; send JSON text")
    fast = _audio_chunk_fast(raw)
    if fast is not None:
        return fast
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, or an integer of > 4300 digits
        if isinstance(exc, json.JSONDecodeError):
            msg = exc.msg
        elif isinstance(exc, RecursionError):
            msg = "nested too deeply"
        else:
            msg = "a number is too long"
        raise ProtocolError("invalid_message", f"message is not valid JSON: {msg}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("invalid_message", f"expected a JSON object, got {type(obj).__name__}")
    if "user_audio_chunk" in obj and "type" not in obj:
        chunk = obj["user_audio_chunk"]
        if not isinstance(chunk, str):
            raise ProtocolError("value_error", "user_audio_chunk must be a base64 string")
        try:
            pcm = base64.b64decode(chunk, validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("value_error", "user_audio_chunk is not valid base64") from None
        return UserAudioChunk(pcm=pcm)
    mtype = obj.get("type")
    if mtype is None:
        raise ProtocolError("missing_fields", "message has no 'type' (and is not a user_audio_chunk)")
    if not isinstance(mtype, str):
        raise ProtocolError("invalid_message", f"'type' must be a string, got {type(mtype).__name__}")
    if mtype not in KNOWN_TYPES:
        shown = mtype if len(mtype) <= 64 else mtype[:64] + "..."
        raise ProtocolError("invalid_message", f"unknown message type {shown!r}")
    try:
        parsed: ClientMessage = _typed.validate_python(obj)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"][1:]) or "message"
        kind = "missing_fields" if err["type"] == "missing" else "value_error"
        raise ProtocolError(kind, f"{mtype}: {where}: {err['msg']}") from None
    return parsed
