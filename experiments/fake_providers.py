"""The fake Groq and ElevenLabs servers (``tests/fakes``) in a process of their own, for the capacity
and soak benchmarks: their work must not count as the ``ah`` server's, nor compete with it in its
event loop.

``start_fakes(...)`` runs this file as a child, which prints one line ``URLS <groq> <elevenlabs>``;
the caller points ``ah`` at them with ``GROQ_BASE_URL`` / ``ELEVENLABS_BASE_URL`` (what
``graphs/cloud.yaml`` reads). At SIGTERM the child writes what it injected (faults per kind, requests,
generations) to a JSON file.

Latencies (median:p95 ms, log-normal) are the published figures ``experiments/cloud_latency.py`` uses
(its docstring cites the sources): Groq Whisper 190:280 ms a request plus audio/216, Groq Llama 3.1 8B
120:250 ms to the first token and 1.7 ms a word, ElevenLabs Flash 135:250 ms to first audio and
150:400 ms to connect.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SELF = str(Path(__file__).resolve())


@dataclass
class FakeSettings:
    groq_ttft: str = "120:250"
    groq_token_gap: str = "1.7"
    groq_stt: str = "190:280"
    tts_connect: str = "150:400"
    tts_ttfa: str = "135:250"
    groq_faults: str = ""  # e.g. "500=0.01,disconnect=0.002"
    tts_faults: str = ""

    def fixed(self) -> FakeSettings:
        """The same medians without the spread: for comparing load levels, where a log-normal tail would
        make p99 differ between levels by sampling alone."""
        m = {
            k: v.split(":")[0]
            for k, v in self.__dict__.items()
            if k.startswith(("groq_t", "groq_s", "tts_c", "tts_t"))
        }
        return FakeSettings(**{**self.__dict__, **m})

    def argv(self) -> list[str]:
        return [self.groq_ttft, self.groq_token_gap, self.groq_stt, self.tts_connect, self.tts_ttfa,
                self.groq_faults, self.tts_faults]  # fmt: skip


def child(which: str, stats_file: str, *settings: str) -> None:
    """One fake (``groq`` or ``elevenlabs``) in this process until SIGTERM, then its stats to the file."""
    sys.path.insert(0, str(ROOT))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_stop_when_orphaned, args=(stop,), daemon=True).start()
    s = FakeSettings(*settings)
    fake, url, stats = _start_groq(s) if which == "groq" else _start_elevenlabs(s)
    print(f"URL {url}", flush=True)
    stop.wait()
    Path(stats_file).write_text(json.dumps(stats()))
    fake.stop()


def _start_groq(s: FakeSettings) -> tuple[Any, str, Callable[[], dict[str, Any]]]:
    from tests.fakes.groq import FakeGroq, GroqConfig
    from tests.fakes.latency import FaultPlan, Latency

    groq = FakeGroq(
        GroqConfig(
            ttft=Latency.parse(s.groq_ttft),
            token_gap=Latency.parse(s.groq_token_gap),
            stt=Latency.parse(s.groq_stt),
            transcripts=["What is the weather like?", "Tell me more."],
            replies=[
                "It is sunny today. Expect clear skies all afternoon.",
                "Not much more to say, really.",
            ],
            faults=FaultPlan.parse(s.groq_faults, seed=1),
        )
    ).start()

    def stats() -> dict[str, Any]:
        logs = list(groq.requests)
        return {
            "groq_faults_injected": dict(groq.config.faults.injected),
            "groq_requests": len(logs),
            # How late each answer left the loaded fake: (when, which, seconds past the drawn latency).
            # From the body read, so that the client's own upload time is not counted as the fake's.
            "lateness": [
                (
                    log.t_start,
                    "stt" if "transcriptions" in log.path else "llm",
                    log.t_first_byte - log.t_body - log.asked_s,
                )
                for log in logs
                if log.asked_s is not None and log.t_first_byte is not None and log.t_body is not None
            ],
            "upload": [
                (log.t_start, "stt_upload", log.t_body - log.t_start)
                for log in logs
                if "transcriptions" in log.path and log.t_body is not None
            ],
        }

    return groq, groq.base_url, stats


def _start_elevenlabs(s: FakeSettings) -> tuple[Any, str, Callable[[], dict[str, Any]]]:
    from tests.fakes.elevenlabs_tts import FakeElevenLabsTts, TtsConfig
    from tests.fakes.latency import FaultPlan, Latency

    tts = FakeElevenLabsTts(
        TtsConfig(
            connect=Latency.parse(s.tts_connect),
            ttfa=Latency.parse(s.tts_ttfa),
            faults=FaultPlan.parse(s.tts_faults, seed=2),
        )
    ).start()

    def stats() -> dict[str, Any]:
        return {
            "tts_faults_injected": dict(tts.config.faults.injected),
            "tts_generations": len(tts.generations),
            "tts_connections": len(tts.connections),
            "lateness": [
                (gen.t_request, "tts", gen.t_first_audio - gen.t_request - gen.asked_s)
                for gen in list(tts.generations)
                if gen.asked_s is not None and gen.t_first_audio is not None
            ],
        }

    return tts, tts.url, stats


def _stop_when_orphaned(stop: threading.Event) -> None:
    """A benchmark that dies without SIGTERM (a graph that does not load, a kill) must not leave its
    fakes serving: they would hold the ports, and the benchmark lock that ``flock`` passed down."""
    parent = os.getppid()
    while not stop.wait(1.0):
        if os.getppid() != parent:
            stop.set()


@dataclass
class Fakes:
    """The fakes' processes: one per provider, so that under load they do not share one GIL (one
    process for both made its answers late by up to 150 ms at 100 sessions: capacity.py's
    ``fake_providers_late_ms``)."""

    procs: dict[str, asyncio.subprocess.Process]
    stats_file: Path

    def cpu_s(self) -> float:
        from experiments.load_harness import proc_cpu_s

        return sum(proc_cpu_s(p.pid) for p in self.procs.values() if p.returncode is None)


async def start_fakes(settings: FakeSettings, stats_file: Path) -> tuple[Fakes, dict[str, str]]:
    """Start the fakes; return them and the environment that points ``ah`` at them."""
    procs: dict[str, asyncio.subprocess.Process] = {}
    urls: dict[str, str] = {}
    fakes = Fakes(procs, stats_file)
    try:
        for which in ("groq", "elevenlabs"):
            procs[which] = proc = await asyncio.create_subprocess_exec(
                sys.executable, SELF, which, f"{stats_file}.{which}", *settings.argv(),
                stdout=asyncio.subprocess.PIPE, cwd=ROOT,
            )  # fmt: skip
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().split()
            if not line or line[0] != "URL":
                raise SystemExit(f"the fake {which} server did not start")
            urls[which] = line[1]
    except BaseException:
        await stop_fakes(fakes)
        raise
    env = {
        "GROQ_BASE_URL": urls["groq"],
        "ELEVENLABS_BASE_URL": urls["elevenlabs"],
        "GROQ_API_KEY": "fake-groq-key",
        "ELEVENLABS_API_KEY": "fake-elevenlabs-key",
    }
    return fakes, env


async def stop_fakes(fakes: Fakes) -> dict[str, Any]:
    """Stop them; what they injected and measured, both fakes' stats in one dict (lateness joined)."""
    result: dict[str, Any] = {"lateness": []}
    from experiments.load_harness import terminate

    for which, proc in fakes.procs.items():
        await terminate(proc, 20)
        path = Path(f"{fakes.stats_file}.{which}")
        text = await asyncio.to_thread(lambda p=path: p.read_text() if p.exists() else "{}")
        stats = json.loads(text)
        result["lateness"] += stats.pop("lateness", []) + stats.pop("upload", [])
        result.update(stats)
    return result


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[2], *sys.argv[3:])
