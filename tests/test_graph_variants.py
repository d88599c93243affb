"""`extends:` variants: override params, swap a node's type, remove a node, add edges; metadata and
the variant hash."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ah.runtime.clock import VirtualClock
from ah.runtime.graph_loader import Graph, check_graph, load_graph
from ah.runtime.graph_model import GraphFile
from ah.runtime.session import Session

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = Path("tests/fixtures/graphs/variants")
V = str(VARIANTS)


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def load(name: str) -> Graph:
    return load_graph(VARIANTS / f"{name}.yaml")


def params(graph: Graph, node: str) -> dict[str, object]:
    return graph.nodes[node].params.model_dump()


def edges(graph: Graph) -> list[str]:
    return [str(e) for e in graph.edges]


def test_base() -> None:
    g = load("base")
    assert (g.name, g.description, g.version) == ("base", "A short tone through a gain into a sink", "2")
    assert {n: g.nodes[n].type_name for n in g.nodes} == {
        "mic": "util.tone_source",
        "gain": "util.gain",
        "out": "util.sink",
    }
    assert edges(g) == ["mic.audio -> gain.audio_in", "gain.audio_out -> out.inp"]
    assert g.files == [str((ROOT / V / "base.yaml").resolve())]


def test_override_a_param_keeps_the_others() -> None:
    g = load("louder")
    assert params(g, "gain") == {"gain": 2.0}
    assert params(g, "mic") == params(load("base"), "mic")
    assert edges(g) == edges(load("base"))


def test_metadata_of_a_variant() -> None:
    louder = load("louder")
    # No `graph:` in the variant: its file names it; description and version come from the base.
    assert (louder.name, louder.description, louder.version) == (
        "louder",
        "A short tone through a gain into a sink",
        "2",
    )
    swapped = load("swapped")
    assert (swapped.name, swapped.description, swapped.version) == (
        "no-sink",
        "The base graph ending in a passthrough",
        "3",
    )


def test_params_merge_along_a_chain_of_variants() -> None:
    g = load("higher")
    assert g.name == "higher"
    assert params(g, "gain") == {"gain": 2.0}  # from louder.yaml
    assert params(g, "mic")["frequency_hz"] == 880  # from higher.yaml
    assert params(g, "mic")["duration_s"] == 0.1  # from base.yaml
    assert [Path(f).name for f in g.files] == ["base.yaml", "louder.yaml", "higher.yaml"]


def test_swap_a_nodes_type_replaces_its_params() -> None:
    g = load("swapped")
    assert g.nodes["out"].type_name == "util.passthrough"
    assert params(g, "out") == {}  # the sink's `report: false` is gone, not merged into a passthrough
    assert edges(g) == edges(load("base"))


def test_swap_to_a_type_without_the_ports_reports_the_base_edges() -> None:
    graph, issues = check_graph(VARIANTS / "swapped_ports.yaml")
    assert graph is None
    assert [i.format() for i in issues] == [
        f"{V}/base.yaml:9:23: edges[0]: node 'gain' (util.passthrough) has no input port 'audio_in'; "
        "expected one of: inp",
        f"{V}/base.yaml:10:10: edges[1]: node 'gain' (util.passthrough) has no output port 'audio_out'; "
        "expected one of: out; did you mean 'out'?",
    ]


def test_remove_a_node_with_null_removes_its_edges() -> None:
    g = load("removed")
    assert set(g.nodes) == {"mic", "out"}
    assert edges(g) == ["mic.audio -> out.inp"]


def test_add_a_node_and_an_edge() -> None:
    g = load("tapped")
    assert set(g.nodes) == {"mic", "gain", "out", "tap"}
    assert edges(g) == [*edges(load("base")), "mic.audio -> tap.inp"]
    added = g.edges[-1]
    assert (added.policy.value, added.capacity) == ("drop_oldest", 8)


def test_errors_in_a_variant_point_at_the_variant() -> None:
    graph, issues = check_graph(VARIANTS / "bad_override.yaml")
    assert graph is None
    assert [i.format() for i in issues] == [
        f"{V}/bad_override.yaml:3:19: nodes.gain.params.gian: unknown param 'gian' for util.gain; "
        "expected one of: gain; did you mean 'gain'?",
        f"{V}/bad_override.yaml:4:8: nodes.tap: cannot remove node 'tap': the base graph has no such node; "
        "expected one of: mic, gain, out",
    ]


def test_unknown_top_level_field_in_a_variant_is_reported(tmp_path: Path) -> None:
    base = (ROOT / V / "base.yaml").read_text()
    (tmp_path / "base.yaml").write_text(base)
    (tmp_path / "v.yaml").write_text("extends: base.yaml\nedge:\n  - mic.audio -> out.inp\n")
    _, issues = check_graph(tmp_path / "v.yaml")
    assert [(i.mark.line, i.path, i.message) for i in issues] == [
        (
            2,
            "edge",
            f"unknown field 'edge'; expected one of: {', '.join(GraphFile.model_fields)}; did you mean 'edges'?",
        )
    ]


ALL = ["base", "louder", "higher", "swapped", "removed", "tapped"]


def test_variant_hash_differs_between_variants() -> None:
    hashes = {name: load(name).variant_hash for name in ALL}
    assert len(set(hashes.values())) == len(ALL), hashes
    for h in hashes.values():
        assert len(h) == 12 and int(h, 16) >= 0


def test_variant_hash_is_stable() -> None:
    # Fixed across runs and machines: it hashes what runs, not where the files are.
    assert load("base").variant_hash == load("base").variant_hash
    assert load("base").variant_hash == "9d8158628b1e"


def test_variant_hash_ignores_name_and_spelling() -> None:
    """renamed.yaml has another name and description and spells a default param out: same graph."""
    base, renamed = load("base"), load("renamed")
    assert renamed.name == "renamed" and renamed.name != base.name
    assert renamed.variant_hash == base.variant_hash


def test_a_variant_runs() -> None:
    graph = load("removed")
    session = Session(graph, clock=VirtualClock(auto_advance=True))
    result = asyncio.run(session.run())
    assert result.ok
    summary = [e.data for e in session.events if e.kind == "sink_summary"]
    assert summary == [{"frames": 5, "audio_s": 0.1}]
