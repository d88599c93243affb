"""Running local models beside the event loop: one copy per process, on small dedicated thread pools.

A helper for model nodes (``vad.silero``, ``stt.whisper_local``, and any other node that runs a local
model). Its whole API:

``await load_shared(kind, path, loader, pool=..., **options) -> model``
    The process-wide copy of a model. The first caller runs ``loader()`` on ``pool`` (off the event
    loop: loading takes long enough to stall every other session's loop); later callers with the same
    ``(kind, path, options)`` key get that same object, and concurrent first callers wait for the one
    load. Options are part of the key, so e.g. two thread counts give two copies. A failed load is not
    cached: the next caller tries again. ``shared(...)`` is the blocking form, for threads.

``await run_blocking(pool, fn, *args, **kwargs) -> result``
    Runs ``fn(*args, **kwargs)`` on the named pool and returns its result. Cancelling the awaiting
    task cancels the call if it has not started; a call already running finishes in its thread (a C
    library cannot be interrupted) and its result is dropped.

``executor(pool, workers=1) -> ThreadPoolExecutor``
    The named pool itself, created on first use. Pools are per model family, not asyncio's default
    executor, so a slow model never queues behind (or in front of) unrelated blocking calls, and one
    pool per model serialises its calls: with two cores, running two inferences of one model at once
    would only make both slower. The first call fixes ``workers``.

``ort_session(path, threads=1) -> onnxruntime.InferenceSession``
    An ONNX Runtime session limited to ``threads`` intra-op threads and one inter-op thread, CPU only.
    ``run`` is thread-safe and releases the GIL, so one session serves every conversation as long as
    per-conversation state (e.g. a recurrent state tensor) is passed in and out, never kept in it.

``loaded() -> list[key]``
    The keys of the models loaded so far (diagnostics, tests).

Why the pools are gentle with the CPU: inference libraries release the GIL while they compute, so
what delays the event loop is the OS scheduler, not Python (profiled: the loop's stalls fall inside
CTranslate2's encoder, which holds no GIL). Model nodes therefore default to one or two compute
threads, and pool threads run at a slightly lower priority (``os.nice`` + ``AH_INFERENCE_NICE``,
default 5, Linux only; 0 turns it off): when the loop wakes it gets a core at once. Threads a library
starts inherit that priority, which is why models are loaded on their pool. ``tests/test_stt_whisper.py
-s`` prints the loop's lag while Whisper runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import onnxruntime

T = TypeVar("T")

_lock = threading.Lock()
_models: dict[tuple[Hashable, ...], Any] = {}
_loading: dict[tuple[Hashable, ...], threading.Lock] = {}
_pools: dict[str, ThreadPoolExecutor] = {}


def _lower_priority() -> None:
    """Pool initializer: make this thread (and threads it starts) yield the CPU to the event loop."""
    try:
        step = int(os.environ.get("AH_INFERENCE_NICE", "5"))
    except ValueError:
        step = 5
    if step > 0 and hasattr(os, "setpriority") and hasattr(threading, "get_native_id"):
        try:  # Linux: the nice value is per thread, and a thread started from here inherits it.
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + step)
        except OSError:
            pass


def executor(pool: str, workers: int = 1) -> ThreadPoolExecutor:
    """The thread pool named ``pool``, created with ``workers`` threads on first use."""
    with _lock:
        ex = _pools.get(pool)
        if ex is None:
            ex = ThreadPoolExecutor(workers, thread_name_prefix=f"ah-{pool}", initializer=_lower_priority)
            _pools[pool] = ex
        return ex


async def run_blocking(pool: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the pool named ``pool``, off the event loop."""
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await loop.run_in_executor(executor(pool), call)


def _key(kind: str, path: str | Path, options: dict[str, Hashable]) -> tuple[Hashable, ...]:
    return (kind, str(path), *sorted(options.items()))


def shared(kind: str, path: str | Path, loader: Callable[[], T], **options: Hashable) -> T:
    """The process-wide model for ``(kind, path, options)``, loading it with ``loader()`` once (blocking)."""
    key = _key(kind, path, options)
    with _lock:
        if key in _models:
            return _models[key]  # type: ignore[no-any-return]
        once = _loading.setdefault(key, threading.Lock())
    with once:  # concurrent first callers wait here for the one load
        with _lock:
            if key in _models:
                return _models[key]  # type: ignore[no-any-return]
        model = loader()
        with _lock:
            _models[key] = model
            _loading.pop(key, None)
        return model


async def load_shared(
    kind: str, path: str | Path, loader: Callable[[], T], *, pool: str, **options: Hashable
) -> T:
    """:func:`shared`, run on ``pool`` so the event loop is free while a model loads."""
    key = _key(kind, path, options)
    with _lock:
        if key in _models:
            return _models[key]  # type: ignore[no-any-return]
    return await run_blocking(pool, shared, kind, path, loader, **options)


def loaded() -> list[tuple[Hashable, ...]]:
    """Keys of the models loaded in this process (for diagnostics and tests)."""
    with _lock:
        return list(_models)


def ort_session(path: str | Path, threads: int = 1) -> onnxruntime.InferenceSession:
    """A CPU ONNX Runtime session with ``threads`` intra-op threads (call it inside a loader)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
