"""``python -m tests.fakes [groq|elevenlabs|both] [options]``: run the fake cloud services until Ctrl-C.

Prints the environment that aims ``graphs/cloud.yaml`` at them. Latencies are ``MEDIAN[:P95]`` in ms
(log-normal); faults are ``NAME=RATE,...`` per request (see each fake's ``FAULTS``).

    python -m tests.fakes both --ttft 120:250 --stt 190:300 --ttfa 150:250 --groq-faults 429=0.02
"""

from __future__ import annotations

import argparse
import signal
import threading

from tests.fakes.elevenlabs_tts import FakeElevenLabsTts, TtsConfig
from tests.fakes.groq import FakeGroq, GroqConfig
from tests.fakes.latency import FaultPlan, Latency


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tests.fakes", description=__doc__.split("\n")[0])
    ap.add_argument("which", choices=["groq", "elevenlabs", "both"], nargs="?", default="both")
    ap.add_argument("--groq-port", type=int, default=0)
    ap.add_argument("--tts-port", type=int, default=0)
    ap.add_argument("--ttft", type=Latency.parse, default=Latency(0), help="LLM time to first token")
    ap.add_argument("--token-gap", type=Latency.parse, default=Latency(0), help="LLM time between tokens")
    ap.add_argument("--stt", type=Latency.parse, default=Latency(0), help="transcription time per request")
    ap.add_argument("--connect", type=Latency.parse, default=Latency(0), help="TTS WebSocket handshake")
    ap.add_argument("--ttfa", type=Latency.parse, default=Latency(0), help="TTS time to first audio")
    ap.add_argument("--reply", action="append", help="LLM reply (repeatable; cycles)")
    ap.add_argument("--transcript", action="append", help="STT transcript (repeatable; cycles)")
    ap.add_argument("--groq-faults", default="", help="e.g. 429=0.02,disconnect=0.01")
    ap.add_argument("--tts-faults", default="", help="e.g. disconnect=0.01,timeout=0.005")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    running: list[FakeGroq | FakeElevenLabsTts] = []
    if a.which in ("groq", "both"):
        cfg = GroqConfig(
            ttft=a.ttft,
            token_gap=a.token_gap,
            stt=a.stt,
            faults=FaultPlan.parse(a.groq_faults, a.seed),
            seed=a.seed,
        )
        if a.reply:
            cfg.replies = a.reply
        if a.transcript:
            cfg.transcripts = a.transcript
        groq = FakeGroq(cfg, a.groq_port).start()
        running.append(groq)
        print(f"export GROQ_BASE_URL={groq.base_url} GROQ_API_KEY=gsk_fake", flush=True)
    if a.which in ("elevenlabs", "both"):
        tts = FakeElevenLabsTts(
            TtsConfig(
                connect=a.connect, ttfa=a.ttfa, faults=FaultPlan.parse(a.tts_faults, a.seed), seed=a.seed
            ),
            a.tts_port,
        ).start()
        running.append(tts)
        print(f"export ELEVENLABS_BASE_URL={tts.url} ELEVENLABS_API_KEY=xi_fake", flush=True)
    stop.wait()
    for fake in running:
        fake.stop()


if __name__ == "__main__":
    main()
