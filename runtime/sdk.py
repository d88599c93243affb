"""Everything a node author imports: ``from ah.runtime.sdk import Node, Input, Output, Params, ...``."""

from ah.runtime.channel import EdgePolicy, EndOfStream
from ah.runtime.clock import Clock, MonotonicClock, VirtualClock
from ah.runtime.frames import (
    NO_SCOPE,
    Alignment,
    AudioFrame,
    ControlFrame,
    Frame,
    InterruptionFrame,
    ReplyTextFrame,
    SpeechFrame,
    TextFrame,
    TranscriptFrame,
    UserTurnFrame,
    VadFrame,
)
from ah.runtime.node import DoctorCheck, Node, NodeContext, Params, SessionEvent
from ah.runtime.ports import Input, InputPort, Output, OutputPort
from ah.runtime.scopes import Scope, ScopeRegistry, ScopeState

__all__ = [
    "NO_SCOPE",
    "Alignment",
    "AudioFrame",
    "Clock",
    "ControlFrame",
    "DoctorCheck",
    "EdgePolicy",
    "EndOfStream",
    "Frame",
    "Input",
    "InputPort",
    "InterruptionFrame",
    "MonotonicClock",
    "Node",
    "NodeContext",
    "Output",
    "OutputPort",
    "Params",
    "ReplyTextFrame",
    "Scope",
    "ScopeRegistry",
    "ScopeState",
    "SessionEvent",
    "SpeechFrame",
    "TextFrame",
    "TranscriptFrame",
    "UserTurnFrame",
    "VadFrame",
    "VirtualClock",
]
