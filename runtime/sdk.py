"""Everything a node author imports: ``from ah.runtime.sdk import Node, Input, Output, Params, ...``."""

from ah.runtime.channel import EdgePolicy, EndOfStream
from ah.runtime.clock import Clock, MonotonicClock, VirtualClock
from ah.runtime.frames import NO_SCOPE, AudioFrame, Frame, TextFrame
from ah.runtime.node import Node, NodeContext, Params, SessionEvent
from ah.runtime.ports import Input, InputPort, Output, OutputPort
from ah.runtime.scopes import ScopeRegistry, ScopeState

__all__ = [
    "NO_SCOPE",
    "AudioFrame",
    "Clock",
    "EdgePolicy",
    "EndOfStream",
    "Frame",
    "Input",
    "InputPort",
    "MonotonicClock",
    "Node",
    "NodeContext",
    "Output",
    "OutputPort",
    "Params",
    "ScopeRegistry",
    "ScopeState",
    "SessionEvent",
    "TextFrame",
    "VirtualClock",
]
