"""Fake cloud services that speak the real wire formats: Groq's HTTP API and ElevenLabs' TTS WebSocket.

Reusable by tests and benchmarks: ``FakeGroq`` / ``FakeElevenLabsTts`` with latency distributions and
fault plans as parameters (:mod:`tests.fakes.latency`), startable in-process or as
``python -m tests.fakes {groq,elevenlabs}``.
"""

from tests.fakes.elevenlabs_tts import FakeElevenLabsTts, TtsConfig
from tests.fakes.groq import FakeGroq, GroqConfig
from tests.fakes.latency import FaultPlan, Latency

__all__ = ["FakeElevenLabsTts", "FakeGroq", "FaultPlan", "GroqConfig", "Latency", "TtsConfig"]
