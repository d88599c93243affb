"""Typed ports: how a node declares what it consumes and produces.

A node class declares ports as class attributes::

    class Gain(Node):
        audio_in = Input(AudioFrame, doc="audio to scale")
        audio_out = Output(AudioFrame)

On an instance, ``self.audio_in`` is an :class:`InputPort` (``async for frame in self.audio_in``)
and ``self.audio_out`` an :class:`OutputPort` (``await self.audio_out.send(frame)``). An edge is
valid when the output's frame type is the input's type or a subclass of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ah.runtime.channel import Channel, EndOfStream
from ah.runtime.frames import Frame

if TYPE_CHECKING:
    from ah.runtime.node import Node
    from ah.runtime.scopes import ScopeRegistry

F = TypeVar("F", bound=Frame)


@dataclass(frozen=True, slots=True)
class PortSpec:
    name: str
    direction: str  # "in" | "out"
    frame_type: type[Frame]
    required: bool
    doc: str
    runs_ahead: bool = False  # frames of a paused scope are delivered anyway (see Input)

    @property
    def type_name(self) -> str:
        return self.frame_type.__name__


class Input(Generic[F]):
    """Declares an input port. ``required`` inputs must be connected in every graph.

    ``runs_ahead``: the port's channel delivers the frames of a *paused* scope too, so the node works
    ahead on a held reply (a TTS synthesising a preemptive reply before the turn is confirmed); what it
    makes is still held further down, at every input that does not run ahead (the one the client hears
    from). A cancel purges the port's frames as usual.
    """

    def __init__(
        self, frame_type: type[F], *, required: bool = True, doc: str = "", runs_ahead: bool = False
    ) -> None:
        self.frame_type = frame_type
        self.required = required
        self.doc = doc
        self.runs_ahead = runs_ahead
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @property
    def spec(self) -> PortSpec:
        return PortSpec(self.name, "in", self.frame_type, self.required, self.doc, self.runs_ahead)

    @overload
    def __get__(self, obj: None, owner: type) -> Input[F]: ...
    @overload
    def __get__(self, obj: Node[Any], owner: type) -> InputPort[F]: ...
    def __get__(self, obj: Node[Any] | None, owner: type) -> Input[F] | InputPort[F]:
        if obj is None:
            return self
        port: InputPort[F] = obj._ports[self.name]  # type: ignore[assignment]
        return port


class Output(Generic[F]):
    """Declares an output port. An output may be left unconnected; what it sends then goes nowhere."""

    def __init__(self, frame_type: type[F], *, doc: str = "") -> None:
        self.frame_type = frame_type
        self.doc = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @property
    def spec(self) -> PortSpec:
        return PortSpec(self.name, "out", self.frame_type, False, self.doc)

    @overload
    def __get__(self, obj: None, owner: type) -> Output[F]: ...
    @overload
    def __get__(self, obj: Node[Any], owner: type) -> OutputPort[F]: ...
    def __get__(self, obj: Node[Any] | None, owner: type) -> Output[F] | OutputPort[F]:
        if obj is None:
            return self
        port: OutputPort[F] = obj._ports[self.name]  # type: ignore[assignment]
        return port


class InputPort(Generic[F]):
    """The receiving end of one input: iterate it, or ``await recv()``. Ends at end-of-stream."""

    __slots__ = ("channel", "name")

    def __init__(self, name: str, channel: Channel[F]) -> None:
        self.name = name
        self.channel = channel

    async def recv(self) -> F:
        """The next frame; raises :class:`EndOfStream` when every producer has finished."""
        return await self.channel.get()

    def recv_nowait(self) -> F | None:
        """The next frame if one is queued right now, else ``None`` (never waits, never raises at
        end-of-stream): a node that fell behind takes its backlog in one step instead of one per frame."""
        return self.channel.get_nowait()

    # The port is its own async iterator: a plain ``__anext__`` costs less per frame than an async
    # generator (no asend object, no generator frame to resume; experiments/engine_bench.py).
    def __aiter__(self) -> AsyncIterator[F]:
        return self

    async def __anext__(self) -> F:
        try:
            return await self.channel.get()
        except EndOfStream:
            raise StopAsyncIteration from None

    @property
    def depth(self) -> int:
        return self.channel.depth


class OutputPort(Generic[F]):
    """The sending end of one output, fanned out to every connected input."""

    __slots__ = ("_cancelled", "_single", "_tap", "name", "targets")

    def __init__(
        self,
        name: str,
        targets: list[Channel[Any]],
        scopes: ScopeRegistry,
        tap: Callable[[Frame], None] | None = None,
    ) -> None:
        self.name = name
        self.targets = targets
        self._single = targets[0] if len(targets) == 1 else None
        self._cancelled = scopes.cancelled
        #: A session observer's callback for every frame sent here (ah.runtime.observe); None: unwatched.
        self._tap = tap

    @property
    def connected(self) -> bool:
        return bool(self.targets)

    def send(self, frame: F) -> Coroutine[Any, Any, None]:
        """Send downstream, waiting while a ``block`` edge is full (backpressure): ``await`` it.

        A frame of a cancelled scope is discarded here and counted by the channel.
        """
        # Not ``async def``: with one target, hand back the channel's own ``put`` coroutine instead
        # of wrapping it in a second one (~0.2 µs a hop; experiments/engine_bench.py).
        if self._tap is not None:
            self._tap(frame)
        single = self._single
        if single is not None:
            return single.put(frame)
        return self._send_all(frame)

    async def _send_all(self, frame: F) -> None:
        targets = self.targets
        if not targets:
            # Unconnected: the frame goes nowhere, but the sender still yields once, so that a
            # source looping on sends can be cancelled and cannot starve the loop.
            await asyncio.sleep(0)
            return
        for channel in targets:
            await channel.put(frame)

    def close(self) -> None:
        for channel in self.targets:
            channel.close_producer()


__all__ = ["EndOfStream", "Input", "InputPort", "Output", "OutputPort", "PortSpec"]
