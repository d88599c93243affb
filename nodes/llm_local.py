"""``llm.local``: a small chat model on this machine (SmolLM2-135M-Instruct, GGUF, through llama.cpp).

It keeps the contract of every LLM node (see ``llm.scripted``): a reply to a user turn runs in that
turn's scope and streams ``start`` / ``delta`` / ``stop`` text, ``stop`` carrying the full text;
``first_message`` is said when the conversation starts; ``{{variable}}`` placeholders in the system
prompt and first message take the client's dynamic variables.

The 135M model is fluent but unreliable (it answers factual questions with confident nonsense): it is
here to run the real-time machinery with no network and no API key, not for good answers.

Where the work runs:

* The weights load once per process (``ah.nodes.inference.load_shared``) and every session's node
  uses that one ``Llama`` object, so a second conversation costs no load time and no memory.
* A ``Llama`` is not thread-safe: loads and generations run on the one-thread ``llama`` pool of
  ``ah.nodes.inference`` (all sessions' replies one at a time, and a per-model lock besides), and
  the event loop only ever waits on futures. llama.cpp's compute releases the GIL (ctypes calls), so
  what could delay the loop is CPU scheduling: 1 compute thread by default on 2 cores.
* Tokens cross from that thread to the loop through :class:`_Handoff`, a bounded buffer woken with
  ``call_soon_threadsafe`` once per batch (not once per token), so a busy loop gets fewer, bigger
  wake-ups and a stalled consumer makes the generator wait instead of queueing without bound.
* A cancelled reply (barge-in) sets a flag that the generating thread checks after every token, so
  the model stops within a token (about 10 ms) and is free for the next turn. The prompt itself is
  evaluated in one call that cannot be interrupted (tens of ms for a voice-sized prompt).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pydantic import Field

from ah.nodes.inference import load_shared, run_blocking
from ah.nodes.llm_prompt import Message, fill_variables, prompt_messages
from ah.nodes.llm_reply import SpokenWords
from ah.nodes.model_store import MANIFEST, require
from ah.runtime.sdk import (
    ControlFrame,
    Input,
    Node,
    Output,
    Params,
    ReplyTextFrame,
    SessionEvent,
    UserTurnFrame,
)

if TYPE_CHECKING:
    from llama_cpp import Llama

#: Context window every session's prompt (system + history + turn) and reply must fit in.
N_CTX = 2048
#: Token pieces the generating thread may get ahead of the event loop before it waits.
HANDOFF_BOUND = 64
#: Chat-template overhead per message (role markers), for the context budget.
_PER_MESSAGE_TOKENS = 6


class LocalLlmParams(Params):
    model: str = Field("smollm2-135m", description="An LLM from `ah models list` (a GGUF file).")
    system_prompt: str = Field(
        "You are a helpful voice assistant. Be brief.",
        description="System prompt; {{variables}} take the client's dynamic variables.",
    )
    first_message: str = Field(
        "", description="Said when the conversation starts (empty: wait for the user)."
    )
    max_tokens: int = Field(80, ge=1, le=1024, description="Longest reply, in tokens.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling threshold.")
    history_turns: int = Field(
        8, ge=0, description="Past exchanges (user turn + agent reply) kept in the prompt."
    )
    seed: int | None = Field(
        None,
        description="Sampling seed (unset: a random one per reply). Set, every reply is also computed "
        "from a fresh context (no reuse of the shared model's cached prompt prefix), so a seed with "
        "temperature 0 gives the same reply every time.",
    )
    n_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="llama.cpp compute threads. On 2 cores, 1 leaves a core to the event loop, STT and TTS "
        "(~80 tok/s); 2 is faster (~105 tok/s) with more event-loop lag.",
    )


# --------------------------------------------------------------------------------------------------
# One model per process, shared by every session (through ah.nodes.inference).

#: The ``ah.nodes.inference`` pool llama.cpp models load and generate on: one thread, so generations
#: (of all sessions) run one at a time; on two cores two at once would only make both slower.
POOL = "llama"


@dataclass(eq=False)
class LoadedModel:
    """A loaded GGUF. ``lock`` guards the ``Llama``, which is not thread-safe."""

    llm: Llama
    path: Path
    n_threads: int
    load_s: float
    lock: threading.Lock = field(default_factory=threading.Lock)


def _load(path: Path, n_threads: int) -> LoadedModel:
    from llama_cpp import Llama  # imported here: loading its native library takes a moment

    t0 = time.perf_counter()
    # chat_format=None: the chat template comes from the GGUF's metadata.
    llm = Llama(model_path=str(path), n_ctx=N_CTX, n_threads=n_threads, verbose=False)
    # Freed while the interpreter still works: left to ``Llama.__del__`` at shutdown, the free fails
    # noisily ("'NoneType' object is not callable") because llama_cpp's globals are gone by then.
    atexit.register(llm.close)
    return LoadedModel(llm, path, n_threads, time.perf_counter() - t0)


def gguf_path(name: str) -> Path:
    """The GGUF file of model ``name``; :class:`~ah.nodes.model_store.ModelMissing` (naming the
    ``ah models pull`` command) when it is not in the model cache."""
    directory = require(name)
    files = [f.name for f in MANIFEST[name].files if f.name.endswith(".gguf")]
    if not files:
        raise ValueError(f"model {name!r} is not an LLM (no .gguf file); pick one with role llm")
    return directory / files[0]


# --------------------------------------------------------------------------------------------------
# Thread -> event loop.


class _Handoff:
    """A bounded buffer of token pieces from the generating thread to the event loop.

    The thread appends under a lock and wakes the loop (``call_soon_threadsafe``) only when the buffer
    goes from empty to non-empty; the loop takes everything at once. When the loop falls
    ``bound`` pieces behind, the thread waits (checking its stop flag) instead of growing the buffer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, bound: int = HANDOFF_BOUND) -> None:
        self._loop = loop
        self._bound = bound
        self._cond = threading.Condition()
        self._items: list[str] = []
        self._closed = False
        self._ready = asyncio.Event()

    # -- generating thread ---------------------------------------------------------------------------
    def put(self, piece: str, stop: threading.Event) -> bool:
        """Hand ``piece`` over; ``False`` when ``stop`` was set while waiting for room."""
        with self._cond:
            while len(self._items) >= self._bound:
                if stop.is_set():
                    return False
                self._cond.wait(0.05)
            wake = not self._items
            self._items.append(piece)
        if wake:
            self._wake()
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the loop has closed (session gone): nobody is waiting any more
            pass

    # -- event loop ----------------------------------------------------------------------------------
    async def get(self) -> list[str] | None:
        """Every piece handed over since the last call; ``None`` once the thread is done."""
        while True:
            with self._cond:
                if self._items:
                    items, self._items = self._items, []
                    self._cond.notify_all()
                    return items
                if self._closed:
                    return None
                self._ready.clear()
            await self._ready.wait()


@dataclass(slots=True)
class _GenStats:
    tokens: int = 0
    prompt_tokens: int = 0
    first_token_s: float | None = None
    gen_s: float = 0.0
    finish: str = "stop"
    trimmed_messages: int = 0


# --------------------------------------------------------------------------------------------------


class LocalLlm(Node[LocalLlmParams]):
    """Streams replies from a local GGUF chat model (SmolLM2-135M by default), one thread per model."""

    summary = "local LLM (SmolLM2-135M GGUF via llama.cpp), streamed from a worker thread"
    params_model = LocalLlmParams
    turns = Input(UserTurnFrame, doc="user turns, each in its reply scope")
    events = Input(
        ControlFrame, required=False, doc="conversation_started (dynamic variables), contextual_update"
    )
    text = Output(ReplyTextFrame, doc="reply text: start / delta / stop")
    errors = Output(ControlFrame, doc="error events (a missing dynamic variable, a failed generation)")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model: LoadedModel | None = None
        self._vars: dict[str, object] = {}
        #: The conversation so far: user turns, agent replies, context notes (system messages).
        #: An interrupted reply is kept as far as it was generated: what the user actually heard
        #: (``InterruptionFrame.heard``) does not reach this node, which has no input for it yet.
        self.history: list[Message] = []
        self._system: str | None = None

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise RuntimeError(f"{self.id}: the model is loaded in setup()")
        return self._model

    @classmethod
    async def preload(cls, params: Params) -> None:
        assert isinstance(params, LocalLlmParams)
        path = gguf_path(params.model)
        n = params.n_threads
        await load_shared("llama", path, functools.partial(_load, path, n), pool=POOL, n_threads=n)

    async def setup(self) -> None:
        # A missing model fails the session here, at graph start, naming `ah models pull <name>`.
        path = gguf_path(self.params.model)
        n = self.params.n_threads
        # Loaded on the pool it runs on, so llama.cpp's threads inherit that pool's lower priority.
        self._model = await load_shared(
            "llama", path, functools.partial(_load, path, n), pool=POOL, n_threads=n
        )

    async def run(self) -> None:
        self._floor = asyncio.Lock()  # one reply at a time: the first message and a turn never interleave
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._event_loop())
            tg.create_task(self._turn_loop())

    # -- inputs ----------------------------------------------------------------------------------------
    async def _event_loop(self) -> None:
        async for ev in self.events:
            if ev.kind == "conversation_started":
                dv = ev.data.get("dynamic_variables")
                self._vars = dict(dv) if isinstance(dv, dict) else {}
                self._system = await self._fill(self.params.system_prompt)
                if self.params.first_message:
                    scope = self.ctx.scopes.open("reply")
                    await self.ctx.scopes.run_in(scope, self._say(self.params.first_message, scope))
            elif ev.kind == "contextual_update":
                text = str(ev.data.get("text", "")).strip()
                if text:
                    self.history.append({"role": "system", "content": text})

    async def _turn_loop(self) -> None:
        async for turn in self.turns:
            await self.ctx.scopes.run_in(turn.scope, self._answer(turn))

    # -- prompt ----------------------------------------------------------------------------------------
    def prompt_messages(self, user_text: str) -> list[Message]:
        """The messages a reply to ``user_text`` would be generated from: the system prompt, the last
        ``history_turns`` exchanges (with the context notes among them) and the turn itself."""
        system = self._system if self._system is not None else self.params.system_prompt
        return prompt_messages(system, self.history, user_text, self.params.history_turns)

    async def _fill(self, text: str) -> str:
        return await fill_variables(text, self._vars, self.errors)

    # -- replies ---------------------------------------------------------------------------------------
    async def _say(self, text: str, scope: int) -> None:
        """A fixed reply (the first message), streamed word by word like a generated one."""
        async with self._floor:
            full = await self._fill(text)
            await self.text.send(ReplyTextFrame("", kind="start", scope=scope))
            for word in re.findall(r"\S+\s*", full):
                await self.text.send(ReplyTextFrame(word, kind="delta", scope=scope))
            await self.text.send(ReplyTextFrame(full, kind="stop", scope=scope))
            self.history.append({"role": "assistant", "content": full})

    async def _answer(self, turn: UserTurnFrame) -> None:
        async with self._floor:
            if self._system is None:
                self._system = await self._fill(self.params.system_prompt)
            messages = self.prompt_messages(turn.text)
            self.history.append({"role": "user", "content": turn.text})
            said: list[str] = []
            try:
                await self._generate(messages, turn.scope, said)
            finally:
                # Also when the reply was cancelled: the part generated so far stays in the history.
                if said:
                    self.history.append({"role": "assistant", "content": "".join(said)})

    async def _generate(self, messages: list[Message], scope: int, said: list[str]) -> None:
        loop = asyncio.get_running_loop()
        model = self.model
        stop = threading.Event()
        pipe = _Handoff(loop)
        t0 = time.perf_counter()
        job = loop.create_task(run_blocking(POOL, self._generate_blocking, model, messages, stop, pipe))
        job.add_done_callback(_retrieve)  # a reply cancelled as its job failed: the error is not lost
        job.add_done_callback(lambda _: pipe.close())  # a job that never ran (pool shut down) ends the wait
        started = False
        first_token_s: float | None = None
        words = SpokenWords()
        try:
            while True:
                batch = await pipe.get()
                if batch is not None and first_token_s is None:
                    first_token_s = time.perf_counter() - t0
                # Voice-friendly: no markdown symbols, whitespace (newlines too) as single spaces.
                piece = words.feed(None if batch is None else "".join(batch), said)
                if piece:
                    if not started:
                        await self.text.send(ReplyTextFrame("", kind="start", scope=scope))
                        started = True
                    said.append(piece)
                    await self.text.send(ReplyTextFrame(piece, kind="delta", scope=scope))
                if batch is None:
                    break
            try:
                stats = await job
            except Exception as exc:  # a failed generation ends this reply, not the conversation
                self.ctx.logger.exception("%s: generation failed", self.id)
                await self.errors.send(
                    ControlFrame(
                        "error",
                        {"error_type": "llm_error", "code": 1011, "message": f"{type(exc).__name__}: {exc}"},
                        scope=scope,
                    )
                )
                stats = None
            if not started:
                await self.text.send(ReplyTextFrame("", kind="start", scope=scope))
            await self.text.send(ReplyTextFrame("".join(said), kind="stop", scope=scope))
            if stats is not None:
                self.ctx.emit(
                    SessionEvent(
                        "llm_reply",
                        data={
                            "scope": scope,
                            "tokens": stats.tokens,
                            "prompt_tokens": stats.prompt_tokens,
                            "finish": stats.finish,
                            # From the start of the reply to its first token on the event loop: waiting
                            # for the model (other sessions' replies), evaluating the prompt, handoff.
                            "first_token_ms": round((first_token_s or 0.0) * 1000, 1),
                            "prompt_ms": round((stats.first_token_s or 0.0) * 1000, 1),
                            "tokens_per_s": round(stats.tokens / stats.gen_s, 1) if stats.gen_s else 0.0,
                            "trimmed_messages": stats.trimmed_messages,
                        },
                    )
                )
        finally:
            stop.set()  # a cancelled reply: the thread stops after its current token
            job.cancel()  # not started yet (queued behind another session's reply): it never runs

    def _generate_blocking(
        self, model: LoadedModel, messages: list[Message], stop: threading.Event, pipe: _Handoff
    ) -> _GenStats:
        """Runs on the model's pool: the only place this node touches the ``Llama``."""
        with model.lock:
            return self._generate_locked(model, messages, stop, pipe)

    def _generate_locked(
        self, model: LoadedModel, messages: list[Message], stop: threading.Event, pipe: _Handoff
    ) -> _GenStats:
        t0 = time.perf_counter()
        stats = _GenStats()
        try:
            if stop.is_set():
                stats.finish = "cancelled"
                return stats
            llm = model.llm
            p = self.params
            messages, stats.prompt_tokens, stats.trimmed_messages = _fit(llm, messages, N_CTX - p.max_tokens)
            if p.seed is not None:
                # No reuse of the cached prefix: what other sessions left in the shared model's cache
                # would change the numerics, and so the reply.
                llm.reset()  # type: ignore[no-untyped-call]
            stream = cast(
                Iterator[Any],
                llm.create_chat_completion(
                    cast(Any, messages),
                    max_tokens=p.max_tokens,
                    temperature=p.temperature,
                    top_p=p.top_p,
                    # Unset, a fresh seed per reply: llama-cpp-python would otherwise derive each one from
                    # the last, so one session's replies would depend on the others'.
                    seed=p.seed if p.seed is not None else random.getrandbits(32),
                    stream=True,
                ),
            )
            t_first = 0.0
            try:
                for chunk in stream:
                    if stop.is_set():
                        stats.finish = "cancelled"
                        break
                    choice = chunk["choices"][0]
                    content = choice["delta"].get("content")
                    if content:
                        if stats.first_token_s is None:
                            t_first = time.perf_counter()
                            stats.first_token_s = t_first - t0
                        stats.tokens += 1
                        if not pipe.put(content, stop):
                            stats.finish = "cancelled"
                            break
                    if choice.get("finish_reason"):
                        stats.finish = str(choice["finish_reason"])
            finally:
                stream_close = getattr(stream, "close", None)
                if stream_close is not None:
                    stream_close()
            if stats.first_token_s is not None:
                stats.gen_s = time.perf_counter() - t_first
            return stats
        finally:
            pipe.close()


def _retrieve(job: asyncio.Task[Any]) -> None:
    if not job.cancelled() and job.exception() is not None:
        logging.getLogger("ah.node.llm_local").debug("generation failed", exc_info=job.exception())


def _fit(llm: Llama, messages: list[Message], budget: int) -> tuple[list[Message], int, int]:
    """Drop the oldest history messages (never the system prompt or the turn) until the prompt fits."""

    def size(m: Message) -> int:
        return len(llm.tokenize(m["content"].encode(), add_bos=False, special=False)) + _PER_MESSAGE_TOKENS

    sizes = [size(m) for m in messages]
    trimmed = 0
    while sum(sizes) > budget and len(messages) > 2:
        del messages[1], sizes[1]
        trimmed += 1
    return messages, sum(sizes), trimmed
