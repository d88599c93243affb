"""``llm.groq`` and ``llm.openai_compatible``: streamed chat completions from a provider's HTTP API.

They keep the contract of every LLM node (see ``llm.scripted``): a reply to a user turn runs in that
turn's scope and streams ``start`` / ``delta`` / ``stop`` text (``stop`` carrying the full text);
``first_message`` is said when the conversation starts; ``{{variables}}`` in the system prompt take the
client's dynamic variables; failures go out on ``errors`` as ``error`` events.

* ``llm.groq`` uses the official ``groq`` SDK (``AsyncGroq``): ``GROQ_API_KEY``, and ``base_url``
  (or the SDK's own ``GROQ_BASE_URL``) to aim it elsewhere.
* ``llm.openai_compatible`` uses the official ``openai`` SDK against any OpenAI-style endpoint by
  ``base_url``: Ollama (``http://127.0.0.1:11434/v1``), vLLM, the llama.cpp server, OpenAI itself.

**Faults.** The SDK retries what is safe to retry before a stream starts (429 honouring
``retry-after``, 408/409, 5xx, connection errors; ``max_retries``). A stream that breaks before its
first token (a dropped connection, a malformed chunk, a mid-stream ``error`` event, no first token by
the deadline) is asked again ``stream_retries`` times: nothing of it has been said. A stream that breaks
after text went out is not retried, since a second answer would repeat what was said: the reply ends
with what was said and the client gets an ``error`` event. Every call has deadlines: to the first
token (``first_token_timeout_s``, SDK retries included), between chunks (``stall_timeout_s``) and for
the whole reply (``reply_timeout_s``). A barge-in closes the stream (the provider sees the
disconnect and stops generating).

**Preemptive generation** (``preemptive: true``). A transcript on ``preview`` (the STT's result for a
tentative end of speech, or its final one, both before the turn policy has confirmed the end of the
turn) starts the request at once, buffered, unheard. When the turn comes and its text and the history are what the
request was made from, the reply takes over that stream, and the provider's time to first token has
already run while the endpointing silence was being timed. Otherwise the early request is cancelled
and a new one starts, so a wrong guess costs tokens, never a wrong answer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
from pydantic import Field

from ah.nodes.cloud import (
    Deadline,
    describe,
    error_frame,
    key_check,
    models_check,
    provider_http_client,
    require_key,
)
from ah.nodes.llm_prompt import Message, fill_variables, prompt_messages
from ah.nodes.llm_reply import SpokenWords
from ah.runtime.sdk import (
    ControlFrame,
    DoctorCheck,
    Input,
    Node,
    Output,
    Params,
    ReplyTextFrame,
    Scope,
    ScopeState,
    SessionEvent,
    TranscriptFrame,
    UserTurnFrame,
)


class ChatLlmParams(Params):
    model: str = Field("llama-3.1-8b-instant", description="Model id at the provider.")
    base_url: str | None = Field(None, description="API base URL (unset: the provider's).")
    api_key_env: str = Field("GROQ_API_KEY", description="Environment variable that holds the API key.")
    system_prompt: str = Field(
        "You are a helpful voice assistant. Answer in one or two short sentences.",
        description="System prompt; {{variables}} take the client's dynamic variables.",
    )
    first_message: str = Field(
        "", description="Said when the conversation starts (empty: wait for the user)."
    )
    max_tokens: int = Field(200, ge=1, le=8192, description="Longest reply, in tokens.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature.")
    history_turns: int = Field(12, ge=0, description="Past exchanges kept in the prompt.")
    preemptive: bool = Field(
        True,
        description="Start generating on a tentative transcript (input `preview`), before the turn ends.",
    )
    max_retries: int = Field(
        2, ge=0, le=10, description="SDK retries before a stream starts (429 with retry-after, 5xx, network)."
    )
    stream_retries: int = Field(
        1, ge=0, le=5, description="New requests when a stream breaks before its first token was said."
    )
    first_token_timeout_s: float = Field(
        4.0, gt=0, le=120, description="Deadline from a request to its first token, SDK retries included."
    )
    stall_timeout_s: float = Field(4.0, gt=0, le=120, description="Deadline between two chunks of a stream.")
    reply_timeout_s: float = Field(30.0, gt=0, le=600, description="Deadline for a whole reply.")


class OpenAICompatibleParams(ChatLlmParams):
    model: str = Field("llama3.2", description="Model id at the server (e.g. an Ollama model tag).")
    base_url: str | None = Field(
        "http://127.0.0.1:11434/v1",
        description="The server's OpenAI-style base URL (…/v1): Ollama, vLLM, llama.cpp server, OpenAI.",
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable that holds the API key.")
    api_key_required: bool = Field(
        False, description="Fail at start when the key is unset (local servers need none)."
    )
    preemptive: bool = Field(
        False, description="Start generating on a tentative transcript (input `preview`)."
    )


_END = None


@dataclass(eq=False)
class _Job:
    """One streamed completion, running on its own: pieces land in ``queue``, then ``None`` or the error."""

    text: str  # the user turn it answers
    history_len: int
    queue: asyncio.Queue[str | BaseException | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    t_start: float = field(default_factory=time.perf_counter)
    t_first: float | None = None
    attempts: int = 0
    finish: str = ""
    usage: dict[str, Any] = field(default_factory=dict)

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


class _ChatLlm(Node[ChatLlmParams]):
    """Shared by the provider LLM nodes: subclasses make the SDK client."""

    params_model: ClassVar[type[Params]] = ChatLlmParams
    provider: ClassVar[str] = ""
    turns = Input(UserTurnFrame, doc="user turns, each in its reply scope")
    events = Input(
        ControlFrame, required=False, doc="conversation_started (dynamic variables), contextual_update"
    )
    preview = Input(
        TranscriptFrame,
        required=False,
        doc="tentative transcripts (preemptive generation); finals are ignored",
    )
    text = Output(ReplyTextFrame, doc="reply text: start / delta / stop")
    errors = Output(ControlFrame, doc="error events (provider failures, a missing dynamic variable)")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history: list[Message] = []
        self._vars: dict[str, object] = {}
        self._system: str | None = None
        self._spec: _Job | None = None
        self._last_turn = ""
        self._client: Any = None
        self._held: dict[int, int] = {}  # scope of a held (preemptive) turn -> history length before it
        self._dropped: set[int] = set()

    # -- the provider -----------------------------------------------------------------------------------------
    def make_client(self, key: str) -> Any:
        raise NotImplementedError

    async def open_stream(self, body: dict[str, Any]) -> Any:
        """The SDK's stream of ``chat.completion.chunk`` objects for a request ``body``."""
        return await self._client.chat.completions.create(**body)

    def key(self) -> str:
        return require_key(
            self.params.api_key_env, f"node {self.id!r}", f"{self.provider} ({self.params.model})"
        )

    def timeout(self) -> httpx.Timeout:
        p = self.params
        return httpx.Timeout(p.first_token_timeout_s, connect=min(5.0, p.first_token_timeout_s))

    async def setup(self) -> None:
        # A missing key fails the session here, at graph start, naming the node and the variable.
        self._client = self.make_client(self.key())

    async def run(self) -> None:
        self._floor = asyncio.Lock()
        self.ctx.scopes.observe(self._on_scope)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._event_loop())
                tg.create_task(self._turn_loop())
                tg.create_task(self._preview_loop())
        finally:
            if self._spec is not None:
                self._spec.cancel()
            if self._client is not None:
                await self._client.close()

    # -- inputs ----------------------------------------------------------------------------------------------
    async def _event_loop(self) -> None:
        async for ev in self.events:
            if ev.kind == "conversation_started":
                dv = ev.data.get("dynamic_variables")
                self._vars = dict(dv) if isinstance(dv, dict) else {}
                self._system = await self._fill(self.params.system_prompt)
                if self.params.first_message:
                    scope = self.ctx.scopes.open("reply")
                    text = await self._fill(self.params.first_message)
                    await self.ctx.scopes.run_in(scope, self._say(text, scope))
            elif ev.kind == "contextual_update":
                note = str(ev.data.get("text", "")).strip()
                if note:
                    self.history.append({"role": "system", "content": note})

    async def _preview_loop(self) -> None:
        async for tr in self.preview:
            text = tr.text.strip()
            # A final transcript counts too: it comes a moment before the turn policy commits the turn.
            # One that repeats the turn just answered came after its turn (the edges race): skipped.
            if not text or not self.params.preemptive or text == self._last_turn:
                continue
            spec = self._spec
            if spec is not None and spec.text == text and spec.history_len == len(self.history):
                continue  # already asked
            if spec is not None:
                spec.cancel()
            self._spec = self._start(text)
            self.ctx.emit(SessionEvent("llm_preemptive_start", data={"text": text}))

    def _on_scope(self, s: Scope) -> None:
        """A held turn's fate: released (resumed), it stays in the history; dropped (cancelled while
        still held: the user went on), it leaves no trace there, since the turn never happened."""
        start = self._held.get(s.id)
        if start is None:
            return
        if s.state is ScopeState.ACTIVE:
            del self._held[s.id]
        elif s.state is ScopeState.CANCELLED:
            del self._held[s.id]
            del self.history[start:]
            self._dropped.add(s.id)
            self._last_turn = ""

    async def _turn_loop(self) -> None:
        async for turn in self.turns:
            await self.ctx.scopes.run_in(turn.scope, self._answer(turn))

    # -- prompt ------------------------------------------------------------------------------------------------
    def prompt_messages(self, user_text: str) -> list[Message]:
        system = self._system if self._system is not None else self.params.system_prompt
        return prompt_messages(system, self.history, user_text, self.params.history_turns)

    async def _fill(self, text: str) -> str:
        return await fill_variables(text, self._vars, self.errors)

    # -- replies -----------------------------------------------------------------------------------------------
    async def _say(self, text: str, scope: int) -> None:
        """A fixed line (the first message): no provider call."""
        await self.text.send(ReplyTextFrame("", kind="start", scope=scope))
        await self.text.send(ReplyTextFrame(text, kind="delta", scope=scope))
        await self.text.send(ReplyTextFrame(text, kind="stop", scope=scope))
        self.history.append({"role": "assistant", "content": text})

    async def _answer(self, turn: UserTurnFrame) -> None:
        async with self._floor:
            if self._system is None:
                self._system = await self._fill(self.params.system_prompt)
            text = turn.text.strip()
            self._last_turn = text
            if turn.held:
                self._held[turn.scope] = len(self.history)
            spec, self._spec = self._spec, None
            t_turn = time.perf_counter()
            if spec is not None and spec.text == text and spec.history_len == len(self.history):
                job, preempted = spec, True
            else:
                if spec is not None:
                    spec.cancel()
                job, preempted = self._start(text), False
            self.history.append({"role": "user", "content": turn.text})
            said: list[str] = []
            try:
                await self._relay(job, turn.scope, said, t_turn, preempted)
            finally:
                job.cancel()  # a barge-in: the stream closes and the provider stops
                if said and turn.scope not in self._dropped:
                    self.history.append({"role": "assistant", "content": "".join(said)})

    def _start(self, text: str) -> _Job:
        job = _Job(text, len(self.history))
        job.task = asyncio.get_running_loop().create_task(self._stream(job, self.prompt_messages(text)))
        return job

    async def _relay(self, job: _Job, scope: int, said: list[str], t_turn: float, preempted: bool) -> None:
        started = False
        words = SpokenWords()
        failure: BaseException | None = None
        t_first_out: float | None = None
        while True:
            item = await job.queue.get()
            if isinstance(item, BaseException):
                failure = item
                item = None
            piece = words.feed(item, said)
            if piece:
                if not started:
                    await self.text.send(ReplyTextFrame("", kind="start", scope=scope))
                    started = True
                    t_first_out = time.perf_counter()
                said.append(piece)
                await self.text.send(ReplyTextFrame(piece, kind="delta", scope=scope))
            if item is None:
                break
        if failure is not None:
            what = "the reply was cut short" if said else "no reply"
            self.ctx.logger.warning(
                "%s: %s after %d attempt(s): %s", self.id, what, job.attempts, describe(failure)
            )
            await self.errors.send(
                error_frame(self.id, "llm_error", f"{self.provider}: {describe(failure)} ({what})", scope)
            )
        if not started:
            await self.text.send(ReplyTextFrame("", kind="start", scope=scope))
        await self.text.send(ReplyTextFrame("".join(said), kind="stop", scope=scope))
        self.ctx.emit(
            SessionEvent(
                "llm_reply",
                data={
                    "scope": scope,
                    "preemptive": preempted,
                    "attempts": job.attempts,
                    "ok": failure is None,
                    # From the committed turn to the first text sent on (0 when a preemptive stream had it).
                    "first_token_ms": round(((t_first_out or time.perf_counter()) - t_turn) * 1000, 1),
                    # From the request to the provider's first token.
                    "provider_ttft_ms": round(((job.t_first or job.t_start) - job.t_start) * 1000, 1),
                    "finish": job.finish,
                    "usage": job.usage,
                },
            )
        )

    async def _stream(self, job: _Job, messages: list[Message]) -> None:
        """Run the completion into ``job.queue``; retry a stream that broke before its first token."""
        p = self.params
        try:
            async with asyncio.timeout(p.reply_timeout_s):
                while True:
                    job.attempts += 1
                    try:
                        await self._stream_once(job, messages)
                        job.queue.put_nowait(_END)
                        return
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        retry = job.t_first is None and job.attempts <= p.stream_retries and _retryable(exc)
                        if not retry:
                            job.queue.put_nowait(exc)
                            return
                        self.ctx.logger.info(
                            "%s: retrying a stream that failed before its first token: %s",
                            self.id,
                            describe(exc),
                        )
        except TimeoutError:
            job.queue.put_nowait(Deadline(f"the reply took longer than {p.reply_timeout_s:g} s"))

    async def _stream_once(self, job: _Job, messages: list[Message]) -> None:
        p = self.params
        t0 = time.perf_counter()

        def first_left() -> float:
            return max(0.001, p.first_token_timeout_s - (time.perf_counter() - t0))

        try:
            # asyncio.timeout, not wait_for: wait_for runs the awaitable as a task of its own, two more
            # turns of the loop for every chunk, which under load is milliseconds on the first token.
            async with asyncio.timeout(first_left()):
                stream = await self.open_stream(
                    {
                        "model": p.model,
                        "messages": messages,
                        "stream": True,
                        "temperature": p.temperature,
                        "max_tokens": p.max_tokens,
                    }
                )
        except TimeoutError:
            raise Deadline(f"no response within {p.first_token_timeout_s:g} s") from None
        try:
            it = stream.__aiter__()
            while True:
                wait = p.stall_timeout_s if job.t_first is not None else first_left()
                try:
                    async with asyncio.timeout(wait):
                        chunk = await it.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    what = "between chunks" if job.t_first is not None else "to the first token"
                    raise Deadline(f"the stream stalled: no chunk within {wait:g} s ({what})") from None
                x_groq = getattr(chunk, "x_groq", None)
                if x_groq is not None and getattr(x_groq, "usage", None) is not None:
                    job.usage = x_groq.usage.model_dump(exclude_none=True)
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                content = choice.delta.content if choice.delta is not None else None
                if content:
                    if job.t_first is None:
                        job.t_first = time.perf_counter()
                    job.queue.put_nowait(content)
                if choice.finish_reason:
                    job.finish = str(choice.finish_reason)
        finally:
            await stream.close()

    # -- ah doctor ---------------------------------------------------------------------------------------------
    @classmethod
    def models_url(cls, params: ChatLlmParams) -> str:
        raise NotImplementedError

    @classmethod
    async def doctor(cls, params: Params) -> list[DoctorCheck]:
        assert isinstance(params, ChatLlmParams)
        required = not isinstance(params, OpenAICompatibleParams) or params.api_key_required
        check, key = key_check(params.api_key_env, cls.provider)
        checks = [check] if (required or key) else []
        if required and key is None:
            return checks
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        checks.append(await models_check(cls.models_url(params), headers, params.model, cls.provider))
        return checks


async def groq_chat_stream(client: Any, body: dict[str, Any]) -> Any:
    """``client.chat.completions.create(**body)`` less its parameter transform: the same request and
    stream, through the SDK's own ``post`` (its retries, errors and SSE parsing), without walking every
    message of the history through the SDK's typed transform, which was 5 % of the event loop at 100
    sessions (experiments/capacity.py's profile) and grows with the conversation. The transform
    leaves plain ``{"role", "content"}`` messages as they are (tests/test_provider_http.py checks the
    two requests are the same)."""
    import groq
    from groq.types.chat import ChatCompletion, ChatCompletionChunk

    return await client.post(
        "/openai/v1/chat/completions",
        body=body,
        cast_to=ChatCompletion,
        stream=True,
        stream_cls=groq.AsyncStream[ChatCompletionChunk],
    )


def _retryable(exc: BaseException) -> bool:
    """A broken stream may be asked again; a refusal with a status (bad request, key, quota) may not:
    the SDK has already retried what its rules allow (429, 5xx)."""
    return getattr(exc, "status_code", None) is None


class GroqLlm(_ChatLlm):
    """Streams replies from Groq's chat completions with the official ``groq`` SDK."""

    summary = "Groq chat completions (groq SDK), streamed; preemptive on tentative transcripts"
    params_model = ChatLlmParams
    provider = "Groq"

    def make_client(self, key: str) -> Any:
        import groq

        p = self.params
        return groq.AsyncGroq(
            api_key=key,
            base_url=p.base_url,
            max_retries=p.max_retries,
            timeout=self.timeout(),
            http_client=provider_http_client(),  # shared TLS context; bodies in one write
        )

    async def open_stream(self, body: dict[str, Any]) -> Any:
        return await groq_chat_stream(self._client, body)

    @classmethod
    def models_url(cls, params: ChatLlmParams) -> str:
        import os

        base = params.base_url or os.environ.get("GROQ_BASE_URL") or "https://api.groq.com"
        return base.rstrip("/") + "/openai/v1/models"


class OpenAICompatibleLlm(_ChatLlm):
    """Streams replies from any OpenAI-style chat completions endpoint with the official ``openai`` SDK."""

    summary = "any OpenAI-style chat endpoint by base_url (Ollama, vLLM, llama.cpp server), streamed"
    params_model = OpenAICompatibleParams
    provider = "OpenAI-compatible server"

    def key(self) -> str:
        p = self.params
        assert isinstance(p, OpenAICompatibleParams)
        if p.api_key_required:
            return super().key()
        import os

        return os.environ.get(p.api_key_env, "").strip() or "no-key"  # the SDK insists on a string

    def make_client(self, key: str) -> Any:
        import openai

        p = self.params
        # A float: this openai release takes its own httpx fork's Timeout, not httpx's.
        return openai.AsyncOpenAI(
            api_key=key, base_url=p.base_url, max_retries=p.max_retries, timeout=p.first_token_timeout_s
        )

    @classmethod
    def models_url(cls, params: ChatLlmParams) -> str:
        return (params.base_url or "https://api.openai.com/v1").rstrip("/") + "/models"
