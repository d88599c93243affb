"""Errors a user can act on: each names the file, line and column, the YAML path, what was expected
and, where one exists, the closest valid name. One fixture per kind of error, exact messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from ah.runtime.graph_loader import GraphValidationError, check_graph, load_graph
from ah.runtime.graph_model import GraphFile
from ah.runtime.registry import NodeRegistry
from tests.nodes_for_tests import TextSource

ROOT = Path(__file__).resolve().parents[1]
ERRORS = Path("tests/fixtures/graphs/errors")
E = str(ERRORS)
TOP_FIELDS = ", ".join(GraphFile.model_fields)  # graph, description, version, extends, nodes, edges, ...

# Every case: fixture -> the exact messages `ah validate` prints for it, in order.
CASES: dict[str, list[str]] = {
    "yaml_syntax": [
        f"{E}/yaml_syntax.yaml:4:3: nodes.mic: YAML syntax error: expected ',' or '}}', but got '<scalar>' "
        "(while parsing a flow mapping that starts at line 3, column 8)",
    ],
    "unknown_type": [
        f"{E}/unknown_type.yaml:4:16: nodes.gain.type: unknown node type 'util.gian'; "
        "expected a registered type (see `ah nodes`); did you mean 'util.gain'?",
    ],
    "unknown_port": [
        f"{E}/unknown_port.yaml:6:9: edges[0]: node 'mic' (util.tone_source) has no output port "
        "'audio_out'; expected one of: audio; did you mean 'audio'?",
    ],
    "type_mismatch": [
        f"{E}/type_mismatch.yaml:7:5: edges[0]: type mismatch: words.text sends TextFrame but "
        "gain.audio_in accepts AudioFrame; expected an output of type AudioFrame (or a subclass)",
    ],
    "missing_input": [
        f"{E}/missing_input.yaml:4:3: nodes.gain: required input 'audio_in' (AudioFrame) of node 'gain' "
        "(util.gain) is not connected; expected an edge into gain.audio_in, e.g. "
        "'mic.audio -> gain.audio_in'",
    ],
    "bad_param": [
        f"{E}/bad_param.yaml:7:13: nodes.gain.params.gain: invalid value 250 for util.gain; "
        "expected a value less than or equal to 100",
    ],
    "duplicate_id": [
        f"{E}/duplicate_id.yaml:5:3: nodes.mic: duplicate node id 'mic' (first defined at line 3); "
        "expected each node id once",
    ],
    "cycle": [
        f"{E}/cycle.yaml:7:5: edges[1]: undeclared cycle a -> b -> a; expected 'feedback: true' on one "
        "of its edges if the loop is intended",
    ],
    "extends_missing": [
        f"{E}/extends_missing.yaml:2:10: extends: extends target 'missing_inpt.yaml' not found "
        f"(no file {E}/missing_inpt.yaml); expected the path of a graph file, relative to this file; "
        "did you mean 'missing_input.yaml'?",
    ],
    # The loop closes in the base, so that is where the message points.
    "extends_loop_a": [
        f"{E}/extends_loop_b.yaml:2:10: extends: extends loop: extends_loop_a.yaml -> "
        "extends_loop_b.yaml -> extends_loop_a.yaml; expected a chain of `extends` that ends at a graph "
        "without one",
    ],
    "many_errors": [
        f"{E}/many_errors.yaml:5:28: nodes.mic.params.frequency_hz: invalid value -5 for util.tone_source; "
        "expected a value greater than 0",
        f"{E}/many_errors.yaml:5:32: nodes.mic.params.volume: unknown param 'volume' for util.tone_source; "
        "expected one of: frequency_hz, duration_s, frame_ms, amplitude, realtime",
        f"{E}/many_errors.yaml:6:16: nodes.gain.type: unknown node type 'util.gian'; expected a registered "
        "type (see `ah nodes`); did you mean 'util.gain'?",
        f"{E}/many_errors.yaml:10:3: nodes.out: duplicate node id 'out' (first defined at line 7); "
        "expected each node id once",
        f"{E}/many_errors.yaml:13:9: edges[1]: node 'mic' (util.tone_source) has no output port 'audoi'; "
        "expected one of: audio; did you mean 'audio'?",
        f"{E}/many_errors.yaml:15:5: edges[3]: undeclared cycle loop_a -> loop_b -> loop_a; expected "
        "'feedback: true' on one of its edges if the loop is intended",
    ],
}


@pytest.fixture
def registry() -> NodeRegistry:
    reg = NodeRegistry.from_entry_points()
    reg.register("test.text_source", TextSource)
    return reg


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # messages name files relative to where the user works


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_messages(case: str, registry: NodeRegistry) -> None:
    graph, issues = check_graph(ERRORS / f"{case}.yaml", registry)
    assert graph is None
    assert [i.format() for i in issues] == CASES[case]


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_message_says_what_was_expected(case: str, registry: NodeRegistry) -> None:
    _, issues = check_graph(ERRORS / f"{case}.yaml", registry)
    for issue in issues:
        assert issue.mark.line >= 1 and issue.mark.column >= 1
        assert issue.path, issue.format()  # a YAML path, never just "(document)"
        assert "expected" in issue.message, issue.format()


def test_other_loop_direction_points_at_the_other_file(registry: NodeRegistry) -> None:
    _, issues = check_graph(ERRORS / "extends_loop_b.yaml", registry)
    assert [i.format() for i in issues] == [
        f"{E}/extends_loop_a.yaml:2:10: extends: extends loop: extends_loop_b.yaml -> extends_loop_a.yaml "
        "-> extends_loop_b.yaml; expected a chain of `extends` that ends at a graph without one"
    ]


def test_a_file_that_extends_itself(tmp_path: Path) -> None:
    f = tmp_path / "self.yaml"
    f.write_text("extends: self.yaml\nnodes: {}\n")
    _, issues = check_graph(f)
    assert [i.message for i in issues] == [
        "extends loop: self.yaml -> self.yaml; expected a chain of `extends` that ends at a graph without one"
    ]


def test_load_graph_raises_with_every_message(registry: NodeRegistry) -> None:
    with pytest.raises(GraphValidationError) as info:
        load_graph(ERRORS / "many_errors.yaml", registry)
    assert [i.format() for i in info.value.issues] == CASES["many_errors"]
    assert str(info.value) == "\n".join(CASES["many_errors"])


def test_a_missing_file() -> None:
    _, issues = check_graph("no/such/graph.yaml")
    assert [i.format() for i in issues] == [
        "no/such/graph.yaml:1:1: (document): file not found; expected a graph file (.yaml)"
    ]


# Structure errors found by the pydantic models, checked on inline text.
STRUCTURE: list[tuple[str, list[str]]] = [
    (
        "graph: g\ndescripton: x\nnodes: {}\n",
        [
            "g.yaml:2:1: descripton: unknown field 'descripton'; expected one of: "
            f"{TOP_FIELDS}; did you mean 'description'?"
        ],
    ),
    (
        "nodes:\n  s: {type: util.sink, prams: {}}\n  t: {type: util.tone_source}\nedges: [t.audio -> s.inp]\n",
        [
            "g.yaml:2:24: nodes.s.prams: unknown field 'prams'; expected one of: type, params, description; "
            "did you mean 'params'?"
        ],
    ),
    (
        "nodes:\n  s: {params: {}}\n",
        [
            "g.yaml:2:6: nodes.s.type: missing required field 'type'; expected a registered node type (see `ah nodes`)"
        ],
    ),
    (
        "nodes:\n  t: {type: util.tone_source}\n  s: {type: util.sink}\nedges:\n  - t.audio => s.inp\n",
        ["g.yaml:5:5: edges[0]: malformed edge 't.audio => s.inp'; expected 'node.port -> node.port'"],
    ),
    (
        "nodes:\n  t: {type: util.tone_source}\n  s: {type: util.sink}\n"
        "edges:\n  - {edge: t.audio -> s.inp, policy: drop_olde, capacity: 0}\n",
        [
            "g.yaml:5:38: edges[0].policy: invalid value 'drop_olde'; expected 'block' or 'drop_oldest'; "
            "did you mean 'drop_oldest'?",
            "g.yaml:5:59: edges[0].capacity: invalid value 0; expected a value greater than or equal to 1",
        ],
    ),
    (
        "nodes:\n  t: {type: util.tone_source}\n  s: {type: util.sink}\nedges:\n  - t.audio -> sink.inp\n",
        [
            "g.yaml:3:3: nodes.s: required input 'inp' (Frame) of node 's' (util.sink) is not connected; "
            "expected an edge into s.inp, e.g. 't.audio -> s.inp'",
            "g.yaml:5:16: edges[0]: unknown node 'sink' in edge 't.audio -> sink.inp'; expected one of: t, s",
        ],
    ),
    (
        "nodes:\n  s: {type: util.sink}\n  gone: null\nedges: []\n",
        [
            "g.yaml:2:3: nodes.s: required input 'inp' (Frame) of node 's' (util.sink) is not connected; "
            "expected an edge into s.inp",
            "g.yaml:3:9: nodes.gone: node 'gone' is empty; expected a mapping with 'type' and 'params' "
            "(`null` removes a node only in a graph that `extends` one which has it)",
        ],
    ),
    (
        "- just\n- a list\n",
        [
            "g.yaml:1:1: (document): the file holds list ['just', 'a list']; expected a mapping with 'graph', "
            "'nodes' and 'edges'"
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), STRUCTURE)
def test_structure_messages(text: str, expected: list[str]) -> None:
    _, issues = check_graph("g.yaml", text=text)
    assert [i.format() for i in issues] == expected


def test_a_misspelt_input_port_is_reported_once() -> None:
    """The unknown port is the error; "required input not connected" would only repeat it."""
    text = (
        "nodes:\n  t: {type: util.tone_source}\n  g: {type: util.gain}\nedges:\n  - t.audio -> g.audio_inn\n"
    )
    _, issues = check_graph("g.yaml", text=text)
    assert [i.format() for i in issues] == [
        "g.yaml:5:18: edges[0]: node 'g' (util.gain) has no input port 'audio_inn'; expected one of: "
        "audio_in; did you mean 'audio_in'?"
    ]


def test_quoted_edges_point_at_the_right_column() -> None:
    text = 'nodes:\n  t: {type: util.tone_source}\n  s: {type: util.sink}\nedges:\n  - "t.audio -> s.out"\n'
    _, issues = check_graph("g.yaml", text=text)
    assert [i.format() for i in issues][-1] == (
        "g.yaml:5:19: edges[0]: node 's' (util.sink) has no input port 'out'; expected one of: inp"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "nodes:\n\tmic: {type: util.sink}\n",
            "g.yaml:2:1: nodes: YAML syntax error: found character '\\t' that cannot start any token "
            "(while scanning for the next token); expected spaces for indentation (YAML does not allow tabs)",
        ),
        (
            "graph: g\nnodes:\n  a: {type: util.sink}\n   b: 1\n",
            "g.yaml:4:4: nodes: YAML syntax error: expected <block end>, but found '<block mapping start>' "
            "(while parsing a block mapping that starts at line 3, column 3)",
        ),
        (
            "graph: g\nnodes:\n  a: {type: util.sink}\n  b: type: util.sink\n",
            "g.yaml:4:10: nodes.b: YAML syntax error: mapping values are not allowed here; expected valid "
            "YAML: check the indentation, quotes and brackets here",
        ),
        (
            "edges:\n  - a.out -> b.inp\n  - [x, y: z: 1]\n",
            "g.yaml:3:13: edges[1]: YAML syntax error: expected ',' or ']', but got ':' "
            "(while parsing a flow sequence)",
        ),
    ],
)
def test_more_syntax_errors(text: str, expected: str) -> None:
    _, issues = check_graph("g.yaml", text=text)
    assert [i.format() for i in issues] == [expected]
