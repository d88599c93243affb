"""Silero VAD windows of every session in one process, scored together: one ONNX call per round, off the loop.

Why: a live session sends a 20-40 ms frame at a time, one or two 32 ms windows. Scored one session at a
time on the event loop, each window cost ~0.13 ms of the loop's only core; at 100 sessions that was
~40 % of the loop (profiled in ``experiments/capacity.py``), which is what made latency collapse there.
Silero's network takes a batch (``input`` [B, 576], ``state`` [2, B, 128]), and one call for 32
sessions costs ~57 us a window instead of ~135. So every session's windows go to one process-wide
:class:`WindowBatcher`, which runs them on the ``vad`` thread pool (the second core; ONNX Runtime frees
the GIL) as few calls as possible.

Batching without waiting: no timer gathers a batch. The first request starts a batch at once; requests
that arrive while it runs form the next one. With one session that is one call per frame (as before,
plus a thread hop); under load batches grow by themselves, and no window waits longer than one batch.

State is per session (:class:`SileroState`: the recurrent state and the last 64 samples), carried in
and out of each call; the batch result for a session is the same as scoring it alone (to float
rounding), so sessions never see each other's audio. A session's requests are sequential (its node
awaits each), so its state is never in two batches at once.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ah.nodes.inference import run_blocking

SR = 16000
WINDOW = 512  # samples per decision: 32 ms
CONTEXT = 64  # samples of the previous window the model sees in front of each one
_SR = np.array(SR, dtype=np.int64)
_SCALE = np.float32(1 / 32768)


@dataclass
class SileroState:
    """One session's recurrent state and audio context."""

    state: np.ndarray = field(default_factory=lambda: np.zeros((2, 1, 128), dtype=np.float32))
    context: np.ndarray = field(default_factory=lambda: np.zeros(CONTEXT, dtype=np.float32))


@dataclass
class _Request:
    session: SileroState
    windows: np.ndarray  # [k, WINDOW] int16 PCM: the float conversion is the pool's work, not the loop's
    future: asyncio.Future[list[float]]
    probs: list[float] = field(default_factory=list)
    state: np.ndarray | None = None
    context: np.ndarray | None = None


def score_batch(model: Any, requests: list[_Request]) -> None:
    """Score every request's windows, one ONNX call per round (window j of every request that has one).

    Blocking; runs on the pool. Writes each request's probabilities and final state into the request.
    """
    counts = [len(r.windows) for r in requests]
    state = np.concatenate([r.session.state for r in requests], axis=1)  # [2, B, 128]
    context = np.stack([r.session.context for r in requests])  # [B, CONTEXT]
    for j in range(max(counts)):
        rows = [i for i, c in enumerate(counts) if c > j]
        wins = np.stack([requests[i].windows[j] for i in rows]).astype(np.float32) * _SCALE
        if len(rows) == len(requests):
            x = np.concatenate((context, wins), axis=1)
            out, state = model.run(None, {"input": x, "state": state, "sr": _SR})
            context = wins[:, -CONTEXT:].copy()
        else:
            x = np.concatenate((context[rows], wins), axis=1)
            out, new = model.run(None, {"input": x, "state": state[:, rows], "sr": _SR})
            state[:, rows] = new
            context[rows] = wins[:, -CONTEXT:]
        for k, i in enumerate(rows):
            requests[i].probs.append(float(out[k, 0]))
    for i, r in enumerate(requests):
        r.state = state[:, i : i + 1].copy()
        r.context = context[i].copy()


class WindowBatcher:
    """The process's queue of VAD windows for one model (use :func:`batcher`)."""

    def __init__(self, model: Any, pool: str) -> None:
        self._model = model
        self._pool = pool
        self._pending: list[_Request] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None  # held so it is not garbage-collected mid-batch
        self.largest = 0  # most requests in one batch (tests: sessions did share calls)
        self.requests = 0  # score() calls (tests: a node that fell behind catches up in few of them)

    async def score(self, session: SileroState, samples: np.ndarray) -> list[float]:
        """Speech probability of each whole window in ``samples`` (int16 PCM, a multiple of WINDOW long).

        PCM16 as it came: converting to float here, per frame of every session, was several per cent
        of the event loop at 100 sessions; the pool converts a whole batch in one call."""
        loop = asyncio.get_running_loop()
        request = _Request(session, samples.reshape(-1, WINDOW), loop.create_future())
        self.requests += 1
        self._pending.append(request)
        if not self._running:
            self._running = True
            self._task = loop.create_task(self._drain(), name="vad-batcher")
        return await request.future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                self.largest = max(self.largest, len(batch))
                try:
                    await run_blocking(self._pool, score_batch, self._model, batch)
                except BaseException as exc:  # every waiter hears of it; none hangs
                    for r in batch:
                        if not r.future.done():
                            r.future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for r in batch:
                    assert r.state is not None and r.context is not None
                    r.session.state, r.session.context = r.state, r.context
                    if not r.future.done():
                        r.future.set_result(r.probs)
        finally:
            self._running = False
            for r in self._pending:  # only when cancelled mid-batch (the loop is closing)
                if not r.future.done():
                    r.future.cancel()
            self._pending = []


_batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, WindowBatcher]] = (
    weakref.WeakKeyDictionary()
)


def batcher(model: Any, pool: str) -> WindowBatcher:
    """The running loop's batcher for ``model`` (one per loop and model: futures belong to a loop)."""
    per_loop = _batchers.setdefault(asyncio.get_running_loop(), {})
    found = per_loop.get(id(model))
    if found is None:
        found = per_loop[id(model)] = WindowBatcher(model, pool)
    return found
