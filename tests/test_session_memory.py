"""An ended session is freed by reference counting alone, with no help from the cycle collector.

Why it matters: under 100 sessions a full collection stalls the event loop for 45-80 ms, every turn
in flight waits, and that was the p99 tail of experiments/capacity.py. The server makes full
collections rare, which is safe only if nothing a session leaves behind is cyclic garbage: otherwise
memory grows under churn until the next one (the 30-minute soak grew 55 % when sessions were still
cycles). So this test turns the collector off, runs sessions through the real server and the cloud
graph's real provider clients (fakes on the other end), and asks the collector what it would have had
to free: nothing of ours, httpx's or groq's, nor any WebSocket the server opened or accepted, may be
in it.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import threading
import types
import weakref
from typing import Any

import pytest
import uvloop
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.protocol import Protocol
from websockets.server import ServerProtocol

from tests.cloud_helpers import GRAPH, Conversation, fakes, silence, speech
from tests.fakes.elevenlabs_tts import TtsConfig
from tests.server_helpers import serving, voice_graphs, ws_url

# Whose garbage would be the server's: our modules (the server's connections are ah.server.app's own
# subclass), the provider clients, and the websockets protocols the server made (see ``ours``). Other
# asyncio and websockets objects are left out: the fakes run in this process, on their own loops.
SERVER_SIDE = ("ah.", "httpx", "httpcore", "groq")


def owner(obj: Any) -> str:
    """The module an object (or a frame's or coroutine's code) belongs to."""
    kind = type(obj)  # not isinstance: a dead weak proxy in the garbage raises on __class__
    if kind is types.FrameType:
        return str(obj.f_globals.get("__name__", "?"))
    if kind in (types.CoroutineType, types.FunctionType):
        return getattr(obj, "__module__", None) or "?"
    return kind.__module__


def label(obj: Any) -> str:
    if type(obj) is types.FrameType:
        return f"frame {obj.f_code.co_name} ({owner(obj)})"
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


async def one_session(port: int, agent: str, barge_in: bool, vanish: bool = False) -> Conversation:
    """A spoken turn answered in full, a typed one, and (``barge_in``) speech over the last reply;
    ``vanish``: the client drops its TCP connection at the end instead of closing the WebSocket."""
    ws = await connect(ws_url(port, agent), open_timeout=5)
    await ws.send(json.dumps({"type": "conversation_initiation_client_data"}))
    c = Conversation(ws)
    c.start()
    try:
        await c.wait("conversation_initiation_metadata")
        await c.stream(speech(0.8) + silence(1.0), realtime=False)
        await c.wait("agent_response")
        await c.settle(0.3)
        await c.say_text("And tomorrow?")
        await c.wait("agent_response", 2)
        if barge_in:
            await c.wait("audio", len(c.of_type("audio")) + 1)
            await c.stream(speech(0.6) + silence(0.3))
            await c.wait("interruption")
        return c
    finally:
        if vanish:
            ws.transport.abort()
        else:
            await ws.close()
        if c._task is not None:
            await asyncio.wait([c._task], timeout=5)


def test_ended_sessions_leave_no_cyclic_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    # websockets protocols are ours when the server made them: its connections, and the TTS node's
    # sockets to the provider; not this test's clients, nor the fakes' (they run on other threads).
    ours: weakref.WeakSet[Protocol] = weakref.WeakSet()
    recorded = collections.Counter[str]()
    server_thread = threading.get_ident()

    def recording(cls: type[Protocol]) -> Any:
        make = cls.__init__

        def init(self: Protocol, *args: Any, **kwargs: Any) -> None:
            make(self, *args, **kwargs)
            if threading.get_ident() != server_thread:
                return
            if isinstance(self, ClientProtocol) and "/convai/" in self.uri.path:
                return  # this test's own client
            ours.add(self)
            recorded[cls.__name__] += 1

        return init

    for cls in (ServerProtocol, ClientProtocol):
        monkeypatch.setattr(cls, "__init__", recording(cls))

    async def main() -> collections.Counter[str]:
        with fakes(monkeypatch, tts=TtsConfig(ms_per_char=60, rtf=1.5)):
            async with serving(voice_graphs(GRAPH)) as server:
                agent = next(iter(server.graphs))
                # One session first: what a first session creates for the whole process (pools, caches)
                # is not a session's garbage.
                await one_session(server.port, agent, barge_in=True)
                await asyncio.sleep(0.2)
                gc.collect()
                gc.disable()
                try:
                    convs = await asyncio.gather(
                        one_session(server.port, agent, barge_in=False),
                        one_session(server.port, agent, barge_in=True),
                        one_session(server.port, agent, barge_in=False, vanish=True),
                    )
                    for _ in range(100):  # the server lets go of a session after its close handshake
                        if not server.sessions:
                            break
                        await asyncio.sleep(0.05)
                    assert not server.sessions
                    await asyncio.sleep(0.2)
                    assert all(not c.errors() for c in convs), [c.errors() for c in convs]
                    assert convs[1].of_type("interruption"), "the second session was interrupted"
                    # This run's three sessions: their connections, and at least a TTS socket each.
                    assert recorded["ServerProtocol"] >= 4 and recorded["ClientProtocol"] >= 4, recorded
                    left = {id(p) for p in ours}  # before collecting: it clears weak references
                    gc.set_debug(gc.DEBUG_SAVEALL)
                    gc.collect()
                    garbage = [o for o in gc.garbage if owner(o).startswith(SERVER_SIDE) or id(o) in left]
                    return collections.Counter(label(o) for o in garbage)
                finally:
                    gc.set_debug(0)
                    gc.garbage.clear()
                    gc.enable()

    # On uvloop, as `ah run` serves: the default loop's own transports are cycles (a bound method kept
    # on the transport), which are not ours to fix.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        census = runner.run(main())
    assert not census, f"cyclic garbage left by ended sessions: {census.most_common(15)}"
