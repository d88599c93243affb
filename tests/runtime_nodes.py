"""Node types that exist only for the runtime tests, and helpers to build graphs from YAML text.

Tests observe a session the way a user of the runtime does: a graph goes in, frames and events come
out. Sources take their frames from params or from a queue the test feeds (``attachments["feed"]``);
:class:`Recorder` reports every frame it receives as a ``frame`` event, so a test reads what was
delivered from ``session.events`` (or live, through ``on_event``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field

from ah.runtime.frames import Frame, TextFrame
from ah.runtime.graph_loader import Graph, load_graph
from ah.runtime.node import Node, Params, SessionEvent
from ah.runtime.ports import Input, Output
from ah.runtime.registry import NodeRegistry
from ah.runtime.session import Session


class CountParams(Params):
    count: int = Field(5, ge=0)
    prefix: str = "f"
    every_s: float = Field(0.0, ge=0, description="Sleep this long on the session clock after each frame.")


class CountSource(Node[CountParams]):
    """Sends ``prefix0 .. prefix{count-1}`` as text frames, then ends."""

    params_model = CountParams
    out = Output(TextFrame)

    async def run(self) -> None:
        p = self.params
        sent = 0
        try:
            for i in range(p.count):
                await self.out.send(TextFrame(f"{p.prefix}{i}"))
                sent += 1
                if p.every_s:
                    await self.ctx.clock.sleep(p.every_s)
        finally:
            self.ctx.emit(SessionEvent("source_stopped", data={"sent": sent}))


class Feed(Node[Params]):
    """Sends what the test puts in ``attachments["feed"]`` (an ``asyncio.Queue``); ``None`` ends it."""

    out = Output(Frame)

    async def run(self) -> None:
        feed: asyncio.Queue[Frame | None] = self.ctx.attachments["feed"]
        while (frame := await feed.get()) is not None:
            await self.out.send(frame)


def _check_scope(node: Node[Any], frame: Frame) -> None:
    """Report a frame delivered after its scope was cancelled, or while it is paused.

    These are the invariants the scope tests guard: the check runs at the moment a channel hands
    the frame over, which is the only place "after the cancel returned" can be observed exactly.
    """
    scopes = node.ctx.scopes
    if frame.scope and frame.scope in scopes.cancelled:
        node.ctx.emit(SessionEvent("late_frame", data={"frame": frame}))
    if frame.scope and frame.scope in scopes.paused:
        node.ctx.emit(SessionEvent("held_frame_delivered", data={"frame": frame}))


class Relay(Node[Params]):
    """Forwards every frame (a chain stage), reporting any frame of a cancelled or paused scope."""

    inp = Input(Frame)
    out = Output(Frame)

    async def run(self) -> None:
        async for frame in self.inp:
            _check_scope(self, frame)
            await self.out.send(frame)


class RecorderParams(Params):
    take: int = Field(-1, description="Stop after this many frames (-1: read to end-of-stream).")
    every_s: float = Field(0.0, ge=0, description="Sleep this long on the session clock after each frame.")


class Recorder(Node[RecorderParams]):
    """Emits a ``frame`` event for every frame received, then ``recorder_done``."""

    params_model = RecorderParams
    inp = Input(Frame)

    async def run(self) -> None:
        p = self.params
        n = 0
        if p.take != 0:
            async for frame in self.inp:
                _check_scope(self, frame)
                self.ctx.emit(SessionEvent("frame", data={"frame": frame, "t": self.ctx.clock.now()}))
                n += 1
                if n == p.take:
                    break
                if p.every_s:
                    await self.ctx.clock.sleep(p.every_s)
        self.ctx.emit(SessionEvent("recorder_done", data={"frames": n}))


class BoomParams(Params):
    after: int = Field(0, ge=0, description="Forward this many frames, then raise.")
    only_if_attached: bool = Field(False, description="Raise only in sessions with attachments['crash'].")


class Boom(Node[BoomParams]):
    """Forwards ``after`` frames, then raises ``RuntimeError``."""

    params_model = BoomParams
    inp = Input(Frame)
    out = Output(Frame)

    async def run(self) -> None:
        p = self.params
        crash = not p.only_if_attached or bool(self.ctx.attachments.get("crash"))
        n = 0
        async for frame in self.inp:
            if crash and n == p.after:
                raise RuntimeError(f"boom after {n} frames")
            await self.out.send(frame)
            n += 1


class SetupFails(Node[Params]):
    """Fails in ``setup()``; its ``run()`` must never be reached."""

    out = Output(Frame)

    async def setup(self) -> None:
        raise OSError("model file missing")

    async def run(self) -> None:
        await self.out.send(TextFrame("must never be sent"))


class Idle(Node[Params]):
    """Waits forever (like a node blocked on a network read): only cancellation ends it."""

    async def run(self) -> None:
        await asyncio.Event().wait()


def registry() -> NodeRegistry:
    reg = NodeRegistry.from_entry_points()
    for name, cls in {
        "test.count": CountSource,
        "test.feed": Feed,
        "test.relay": Relay,
        "test.recorder": Recorder,
        "test.boom": Boom,
        "test.setup_fails": SetupFails,
        "test.idle": Idle,
    }.items():
        reg.register(name, cls)
    return reg


REGISTRY = registry()


def graph(text: str, name: str = "test.yaml") -> Graph:
    return load_graph(name, REGISTRY, text=text)


def frames_of(session: Session, node: str | None = None) -> list[Frame]:
    """The frames recorders received, in delivery order (optionally only those of one recorder)."""
    return [e.data["frame"] for e in session.events if e.kind == "frame" and (node is None or e.node == node)]


def texts_of(session: Session, node: str | None = None) -> list[str]:
    out = []
    for f in frames_of(session, node):
        assert isinstance(f, TextFrame)
        out.append(f.text)
    return out


def events_of(session: Session, kind: str) -> list[SessionEvent]:
    return [e for e in session.events if e.kind == kind]
