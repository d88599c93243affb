"""A separate package adds a node type through the `ah.nodes` entry-point group: once installed,
`ah nodes` lists it and graphs use it, with no change to ah."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ah.runtime.graph_loader import check_graph
from ah.runtime.schema import graph_schema_text

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "fixtures" / "plugin_pkg"
GRAPH = "tests/fixtures/plugin_pkg/hello_graph.yaml"

RUN_GRAPH = """
import asyncio, sys
from ah.runtime.clock import VirtualClock
from ah.runtime.graph_loader import load_graph
from ah.runtime.session import Session

graph = load_graph(sys.argv[1])
session = Session(graph, clock=VirtualClock(auto_advance=True))
result = asyncio.run(session.run())
summary = [e.data for e in session.events if e.kind == "sink_summary"]
print(graph.nodes["flip"].cls.__module__, result.ok, summary)
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin, installed with pip into a folder of its own (offline: no build isolation)."""
    base = tmp_path_factory.mktemp("plugin")
    src, target = base / "src", base / "site"
    shutil.copytree(PLUGIN, src)  # pip builds in the source tree; keep build files out of the repo
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-build-isolation",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            "--quiet",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert (target / "ah_hello_plugin" / "__init__.py").is_file()
    return target


def run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS", "TTY_COMPATIBLE")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["NO_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_ah_nodes_lists_the_plugin_type(site: Path) -> None:
    r = run(site, "-m", "ah.cli", "nodes")
    assert r.returncode == 0, r.stderr
    assert "hello.invert  invert audio polarity  ah_hello_plugin:Invert (ah-hello-plugin)" in r.stdout
    rows = [" ".join(line.split()) for line in r.stdout.splitlines()]
    assert "in audio_in AudioFrame PCM16 audio" in rows
    assert "param enabled bool = True Invert the polarity; when false, pass audio through." in rows
    assert "util.gain  scale audio by a constant gain" in r.stdout  # built-ins still there


def test_a_graph_validates_and_runs_with_the_plugin_type(site: Path) -> None:
    r = run(site, "-m", "ah.cli", "validate", GRAPH)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"✓ {GRAPH}: graph 'hello', 3 nodes, 2 edges")
    r = run(site, "-c", RUN_GRAPH, GRAPH)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ah_hello_plugin True [{'frames': 10, 'audio_s': 0.2}]"


def test_ah_run_once_runs_the_plugin_node(site: Path) -> None:
    r = run(site, "-m", "ah.cli", "run", "--once", GRAPH)
    assert r.returncode == 0, r.stderr
    rows = [" ".join(line.split()) for line in r.stdout.splitlines()]
    for channel in ("flip.audio_in", "out.inp"):
        assert any(row.startswith(f"{channel} 10 frames delivered,") for row in rows), r.stdout


def test_plugins_do_not_change_the_schema_file(site: Path) -> None:
    """`schemas/graph.schema.json` describes ah's own node types, whatever else is installed."""
    r = run(site, "-m", "ah.cli", "schema")
    assert r.returncode == 0, r.stderr
    assert r.stdout == graph_schema_text()


def test_without_the_plugin_the_type_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    graph, issues = check_graph(GRAPH)
    assert graph is None
    assert [i.format() for i in issues] == [
        f"{GRAPH}:6:16: nodes.flip.type: unknown node type 'hello.invert'; expected a registered type "
        "(see `ah nodes`)"
    ]


def test_a_broken_plugin_takes_nothing_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plugin that fails to import is named where it is used, and nowhere else."""
    from importlib.metadata import EntryPoint

    from ah.runtime.registry import NodeRegistry
    from ah.runtime.schema import graph_schema

    reg = NodeRegistry.from_entry_points()
    reg._eps["broken.node"] = EntryPoint(name="broken.node", value="no_such_module:Node", group="ah.nodes")
    assert graph_schema(reg) == graph_schema(NodeRegistry.from_entry_points())
    monkeypatch.chdir(ROOT)
    text = "nodes:\n  b: {type: broken.node}\n"
    _, issues = check_graph("g.yaml", reg, text=text)
    assert [i.format() for i in issues] == [
        "g.yaml:2:13: nodes.b.type: node type 'broken.node' (no_such_module:Node) failed to import: "
        "No module named 'no_such_module'; expected the package that provides 'broken.node' to import "
        "(reinstall it?)"
    ]
