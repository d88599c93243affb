"""The `ah` command line, run as a user runs it (a subprocess), plus in-process `--help` checks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ah.cli.main import app
from ah.runtime.schema import graph_schema_text
from tests.test_graph_errors import CASES

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "graph.schema.json"
VARIANTS = "tests/fixtures/graphs/variants"


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # in-process commands take the same relative paths as the subprocesses


def ah(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS", "TTY_COMPATIBLE")}
    clean["NO_COLOR"] = "1"
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ah.cli", *args],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_validate_a_good_graph() -> None:
    r = ah("validate", "graphs/default.yaml")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("✓ graphs/default.yaml: graph 'default', ")
    assert r.stderr == ""


def test_validate_prints_every_error_of_every_file_one_per_line() -> None:
    bad = "tests/fixtures/graphs/errors/many_errors.yaml"
    r = ah("validate", bad, "graphs/default.yaml", "tests/fixtures/graphs/errors/unknown_type.yaml")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        *CASES["many_errors"],
        f"✗ {bad}: 6 errors",
        *CASES["unknown_type"],
        "✗ tests/fixtures/graphs/errors/unknown_type.yaml: 1 error",
    ]
    assert "✓ graphs/default.yaml" in r.stdout  # the good file is still checked


def test_nodes_lists_types_with_ports_and_params() -> None:
    r = ah("nodes")
    assert r.returncode == 0, r.stderr
    for name in ("util.gain", "util.passthrough", "util.sink", "util.tone_source"):
        assert re.search(rf"^{re.escape(name)}  .+\(automagik-hello\)$", r.stdout, re.M), name
    rows = [" ".join(line.split()) for line in r.stdout.splitlines()]
    assert "in audio_in AudioFrame 16 kHz mono PCM16" in rows
    assert "out audio_out AudioFrame scaled audio" in rows
    assert "param gain float = 1.0 Linear gain applied to every sample." in rows
    assert "param realtime bool = True Pace frames to the session clock, like a microphone." in rows


def test_nodes_unknown_type_suggests_the_closest() -> None:
    r = CliRunner().invoke(app, ["nodes", "util.gian"], prog_name="ah")
    assert r.exit_code == 1
    assert "unknown node type 'util.gian'" in r.stderr
    assert "did you mean 'util.gain'?" in r.stderr


def test_nodes_shows_one_type() -> None:
    r = CliRunner().invoke(app, ["nodes", "util.sink"], prog_name="ah")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("util.sink  consume frames and report a summary")
    assert "util.gain" not in r.stdout


def test_schema_file_is_up_to_date() -> None:
    """The stale-schema test: regenerate with `make schema` when the models change."""
    assert SCHEMA.read_text() == graph_schema_text()
    r = ah("schema", "--check", "schemas/graph.schema.json")
    assert r.returncode == 0, r.stderr


def test_schema_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "graph.schema.json"
    stale.write_text(SCHEMA.read_text().replace('"graph"', '"graph_name"', 1))
    r = ah("schema", "--check", str(stale))
    assert r.returncode == 1
    assert "is stale; regenerate it" in r.stderr


def test_graph_show_prints_text_and_draws(tmp_path: Path) -> None:
    svg, png = tmp_path / "g.svg", tmp_path / "g.png"
    r = ah("graph", "show", f"{VARIANTS}/tapped.yaml", "-o", str(svg))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("graph tapped (version 2, variant ")
    assert lines[1:] == [
        "  A short tone through a gain into a sink",
        "nodes:",
        "  mic   util.tone_source  in[-] out[audio:AudioFrame]",
        "  gain  util.gain         in[audio_in:AudioFrame] out[audio_out:AudioFrame]",
        "  out   util.sink         in[inp:Frame] out[-]",
        "  tap   util.sink         in[inp:Frame] out[-]",
        "edges:",
        "  mic.audio -> gain.audio_in  (block, capacity 32)",
        "  gain.audio_out -> out.inp  (block, capacity 32)",
        "  mic.audio -> tap.inp  (drop_oldest, capacity 8)",
        f"picture: {svg}",
    ]
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "tapped" in svg.read_text()  # the title, at least, is there as text

    # The PNG in-process: the same code, without paying for a second matplotlib start-up.
    r2 = CliRunner().invoke(
        app, ["graph", "show", f"{VARIANTS}/tapped.yaml", "--out", str(png)], prog_name="ah"
    )
    assert r2.exit_code == 0, r2.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_graph_show_draws_the_same_svg_twice(tmp_path: Path) -> None:
    from ah.cli.draw import draw_graph
    from ah.runtime.graph_loader import load_graph

    graph = load_graph(ROOT / VARIANTS / "removed.yaml")
    a, b = tmp_path / "a.svg", tmp_path / "b.svg"
    draw_graph(graph, a)
    draw_graph(graph, b)
    assert a.read_bytes() == b.read_bytes()


def test_graph_show_of_an_invalid_graph() -> None:
    r = CliRunner().invoke(
        app,
        ["graph", "show", "tests/fixtures/graphs/errors/unknown_type.yaml", "--no-picture"],
        prog_name="ah",
    )
    assert r.exit_code == 1
    assert r.stderr.splitlines() == [
        *CASES["unknown_type"],
        "✗ tests/fixtures/graphs/errors/unknown_type.yaml: 1 error",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["validate"],  # missing argument
        ["nodes", "--bogus"],  # unknown option
        ["no-such-command"],
        ["graph", "show", "graphs/default.yaml", "-o", "picture.pdf"],  # neither .svg nor .png
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    r = CliRunner().invoke(app, args, prog_name="ah")
    assert r.exit_code == 2, r.output


def test_usage_error_exit_2_as_a_process() -> None:
    r = ah("validate")
    assert r.returncode == 2
    assert "Missing argument" in r.stderr


def _command_paths() -> list[list[str]]:
    """Every command and subcommand of `ah`, found by walking the Typer apps (new ones included)."""
    paths: list[list[str]] = [[]]

    def walk(t: typer.Typer, prefix: list[str]) -> None:
        for cmd in t.registered_commands:
            assert cmd.callback is not None
            paths.append([*prefix, cmd.name or cmd.callback.__name__.replace("_", "-")])
        for group in t.registered_groups:
            assert group.name is not None and group.typer_instance is not None
            paths.append([*prefix, group.name])
            walk(group.typer_instance, [*prefix, group.name])

    walk(app, [])
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(["ah", *p]))
def test_help_on_every_command(path: list[str]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="ah")
    assert result.exit_code == 0, result.output
    assert "Usage: ah" in result.output


def test_help_documents_exit_codes() -> None:
    r = ah("--help")  # also: `python -m ah.cli` calls itself `ah`
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "Usage: ah" in text
    assert "Exit codes: 0 ok, 1 invalid graph or input, 2 usage error" in text


def test_expected_commands_exist() -> None:
    paths = {" ".join(p) for p in _command_paths()}
    assert {"validate", "nodes", "schema", "graph", "graph show", "run"} <= paths


def test_schema_keeps_two_param_models_of_one_name_apart() -> None:
    from pydantic import create_model

    from ah.runtime.registry import NodeRegistry
    from ah.runtime.schema import graph_schema
    from ah.runtime.sdk import Node, Params

    voice_a = create_model("Voice", pitch=(float, 1.0))
    voice_b = create_model("Voice", name=(str, "x"))
    ParamsA = create_model("ParamsA", __base__=Params, voice=(voice_a, voice_a()))
    ParamsB = create_model("ParamsB", __base__=Params, voice=(voice_b, voice_b()))

    class A(Node[ParamsA]):
        params_model = ParamsA

    class B(Node[ParamsB]):
        params_model = ParamsB

    reg = NodeRegistry()
    reg.register("a.node", A)
    reg.register("b.node", B)
    schema = graph_schema(reg, builtin_only=False)
    assert set(schema["$defs"]["Voice"]["properties"]) == {"pitch"}
    assert set(schema["$defs"]["b.node.Voice"]["properties"]) == {"name"}
    rules = {r["if"]["properties"]["type"]["const"]: r["then"] for r in schema["$defs"]["NodeSpec"]["allOf"]}
    assert rules["a.node"]["properties"]["params"]["properties"]["voice"]["$ref"] == "#/$defs/Voice"
    assert rules["b.node"]["properties"]["params"]["properties"]["voice"]["$ref"] == "#/$defs/b.node.Voice"


def test_nodes_shows_param_types_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """`list[str]` and `['hello']` are shown as they are, not eaten as console markup."""
    from ah.runtime.registry import NodeRegistry
    from tests.nodes_for_tests import TextSource

    reg = NodeRegistry()
    reg.register("test.text_source", TextSource)
    monkeypatch.setattr("ah.cli.main.default_registry", lambda: reg)
    r = CliRunner().invoke(app, ["nodes"], prog_name="ah")
    assert r.exit_code == 0, r.output
    rows = [" ".join(line.split()) for line in r.stdout.splitlines()]
    assert rows[0] == "test.text_source send words as text frames tests.nodes_for_tests:TextSource"
    assert "out text TextFrame one word per frame" in rows
    assert "param words list[str] = ['hello'] Words to send, one per frame." in rows
