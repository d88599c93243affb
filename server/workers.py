"""``ah run --workers N``: one listening socket, N worker processes, a supervisor that restarts them.

Sessions share nothing but read-only models, so a machine with several cores is served by several
processes, each a complete ``ah run`` (its own event loop, its own models, its own session limit).

**Why one pre-bound socket rather than ``SO_REUSEPORT``.** The supervisor binds the port once and
hands the same listening socket to every worker (inherited across ``fork``/``exec``); all workers
accept from its one kernel queue. With ``SO_REUSEPORT`` each worker would own a queue of its own and
the kernel would hash each new connection to one of them:

* a worker that dies takes the connections waiting in *its* queue with it (Linux resets them); with
  one shared queue, connections that arrive while a worker is down or restarting wait for, and are
  taken by, the live workers;
* the hash ignores load; with one queue, the worker whose loop is free first accepts first, so an
  idle worker tends to take the next session;
* ``--port 0`` and restarts are simple: the port is bound once and never changes, so a restarted
  worker serves the same address and no client or balancer sees the port go away.

Workers are started as fresh interpreters (``python -m ah.cli run ... --listen-fd FD``), not bare
forks of the supervisor: native libraries with threads (onnxruntime, llama.cpp) are not fork-safe,
and a fresh process loads its models the same way a single ``ah run`` does.

Lifecycle: a worker writes one ``ready`` line on its stdout once it is listening (models loaded);
the supervisor prints the banner when all are ready. A worker that exits on its own (a crash, an OOM
kill, SIGKILL) is restarted, with a back-off when it keeps dying young. SIGTERM (or Ctrl-C) is
forwarded to every worker, each drains (``--drain-timeout``), and the supervisor exits when all have;
a second signal is forwarded too, which ends the workers' drains at once. Workers run in their own
process group (Ctrl-C reaches only the supervisor, which forwards it once) and drain by themselves if
the supervisor disappears.

With a session limit (``--max-sessions K``, per worker) the supervisor also creates the occupancy
table (``ah.server.occupancy``), one slot per worker, inherited like the socket: each worker publishes
its room there and stands aside from the shared socket while it is full and a sibling is not
(``ah.server.gate``), so the server refuses (1013) only when all N x K sessions are taken. The
supervisor zeroes a worker's slot before starting it and as soon as it exits, so a dead worker's last
word never counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ah.server.occupancy import OccupancyTable

log = logging.getLogger("ah.supervisor")

READY = "ready"
RESTART_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)  # for a worker that keeps dying within HEALTHY_AFTER_S
HEALTHY_AFTER_S = 10.0


def bind_listener(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """The one listening socket every worker accepts from (inheritable, so a child process keeps it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog, reuse_port=False)
    sock.set_inheritable(True)
    return sock


def exit_description(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit code {code}"


@dataclass
class Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0  # consecutive deaths within HEALTHY_AFTER_S of starting
    pids: list[int] = field(default_factory=list)  # every pid it has had, newest last

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class Supervisor:
    """Starts ``count`` workers on ``sock``, restarts those that die, forwards SIGTERM and waits."""

    def __init__(
        self,
        sock: socket.socket,
        worker_args: Sequence[str],
        count: int,
        *,
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 120.0,
        table: OccupancyTable | None = None,
    ) -> None:
        if count < 1:
            raise ValueError("at least one worker")
        self.sock = sock
        self.worker_args = list(worker_args)
        self.workers = [Worker(i + 1) for i in range(count)]
        self.env = env
        self.ready_timeout_s = ready_timeout_s
        if table is not None and table.slots != count:
            raise ValueError(f"occupancy table has {table.slots} slots for {count} workers")
        self.table = table
        self.stopping = False
        self.signals = 0

    def _command(self, worker: Worker) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "ah.cli",
            "run",
            *self.worker_args,
            "--listen-fd",
            str(self.sock.fileno()),
            "--worker-id",
            str(worker.index),
        ]
        if self.table is not None:
            command += ["--occupancy-fd", str(self.table.fd)]
        return command

    def _reset_slot(self, worker: Worker) -> None:
        if self.table is not None:
            self.table.reset(worker.index - 1)

    async def _spawn(self, worker: Worker) -> None:
        self._reset_slot(worker)  # no room until the new process is listening and says so
        fds = (self.sock.fileno(),) if self.table is None else (self.sock.fileno(), self.table.fd)
        worker.proc = await asyncio.create_subprocess_exec(
            *self._command(worker),
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            pass_fds=fds,
            start_new_session=True,  # Ctrl-C in a terminal reaches the supervisor only
            env={**os.environ, **(self.env or {})},
        )
        worker.started = time.monotonic()
        worker.pids.append(worker.proc.pid)

    async def _wait_ready(self, worker: Worker) -> None:
        proc = worker.proc
        assert proc is not None and proc.stdout is not None
        async with asyncio.timeout(self.ready_timeout_s):
            while True:
                line = await proc.stdout.readline()
                if not line:
                    code = await proc.wait()
                    raise RuntimeError(
                        f"worker {worker.index} (pid {proc.pid}) ended before it was ready: "
                        f"{exit_description(code)}"
                    )
                if line.decode(errors="replace").strip() == READY:
                    return

    async def start(self) -> None:
        """Start every worker and wait until each is listening; raise if one cannot start."""
        await asyncio.gather(*(self._spawn(w) for w in self.workers))
        try:
            await asyncio.gather(*(self._wait_ready(w) for w in self.workers))
        except BaseException:
            await self._kill_all()
            raise

    async def _kill_all(self) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.kill()
        for w in self.workers:
            if w.proc is not None:
                await w.proc.wait()

    def _forward(self, sig: int) -> None:
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    def on_signal(self) -> None:
        """SIGTERM / SIGINT: every worker drains; a second one ends their drains at once."""
        self.signals += 1
        self.stopping = True
        log.info(
            "supervisor: %s; %s %d worker(s)",
            "stopping" if self.signals == 1 else "second signal",
            "draining" if self.signals == 1 else "ending the drain of",
            len(self.workers),
        )
        self._forward(signal.SIGTERM)

    async def _watch(self, worker: Worker) -> None:
        """Wait for the worker to exit; restart it unless the supervisor is stopping."""
        while True:
            proc = worker.proc
            assert proc is not None
            code = await proc.wait()
            self._reset_slot(worker)  # its last published room must not keep siblings standing aside
            if self.stopping:
                return
            lived = time.monotonic() - worker.started
            worker.quick_deaths = worker.quick_deaths + 1 if lived < HEALTHY_AFTER_S else 0
            delay = 0.0
            if worker.quick_deaths:
                delay = RESTART_BACKOFF_S[min(worker.quick_deaths, len(RESTART_BACKOFF_S)) - 1]
            worker.restarts += 1
            log.warning(
                "supervisor: worker %d (pid %d) %s after %.1f s; restarting it in %.1f s (restart %d)",
                worker.index,
                proc.pid,
                exit_description(code),
                lived,
                delay,
                worker.restarts,
            )
            await asyncio.sleep(delay)
            if self.stopping:
                return
            await self._spawn(worker)
            try:
                await self._wait_ready(worker)
            except RuntimeError as exc:  # it died again before it was ready: the loop restarts it
                log.warning("supervisor: %s", exc)
                continue
            except TimeoutError:
                log.warning(
                    "supervisor: worker %d (pid %d) was not ready in time; killing it",
                    worker.index,
                    worker.pid,
                )
                if worker.proc is not None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.proc.kill()
                continue
            log.info("supervisor: worker %d is back (pid %d)", worker.index, worker.pid)

    async def run(self) -> int:
        """Supervise until every worker has exited after a stop signal; 0 if all drained cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, self.on_signal)
        try:
            await asyncio.gather(*(self._watch(w) for w in self.workers))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError):
                    loop.remove_signal_handler(sig)
            self.sock.close()
            if self.table is not None:
                self.table.close()
        codes = [w.proc.returncode for w in self.workers if w.proc is not None]
        bad = [(w.index, c) for w, c in zip(self.workers, codes, strict=True) if c]
        for index, code in bad:
            log.warning("supervisor: worker %d ended with %s", index, exit_description(code or 0))
        return 0 if not bad else 3


async def watch_parent(original_ppid: int, on_gone: Callable[[], None], interval_s: float = 1.0) -> None:
    """In a worker: call ``on_gone()`` once the supervisor is gone (the worker is re-parented), so an
    orphaned worker drains rather than serving for ever with nobody to restart or stop it."""
    while os.getppid() == original_ppid:  # noqa: ASYNC110 - no event exists for "my parent died"
        await asyncio.sleep(interval_s)
    log.warning("worker: the supervisor (pid %d) is gone; draining", original_ppid)
    on_gone()
