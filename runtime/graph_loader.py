"""Load, merge and check graph files, reporting every problem with file, line, column and path.

A graph is checked in one pass that collects all issues (``ah validate`` prints them together):
YAML syntax, ``extends`` chains, the file's structure (:mod:`ah.runtime.graph_model`), node types,
node params (each type's own params model), ports, edge types, required inputs and cycles.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from ah.runtime.channel import EdgePolicy
from ah.runtime.graph_model import DEFAULT_CAPACITY, EDGE_RE, EdgeSpec, GraphFile, NodeSpec
from ah.runtime.node import Node, Params
from ah.runtime.registry import NodeLoadError, NodeRegistry, closest, default_registry
from ah.runtime.yaml_source import GraphIssue, Mark, PathKey, closest_mark, format_path, parse_yaml

if TYPE_CHECKING:
    import networkx as nx

_V = TypeVar("_V")


class GraphValidationError(Exception):
    def __init__(self, issues: list[GraphIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(i.format() for i in issues))


@dataclass(slots=True)
class ResolvedNode:
    id: str
    type_name: str
    cls: type[Node[Any]]
    params: Params
    mark: Mark


@dataclass(slots=True)
class ResolvedEdge:
    src: str
    src_port: str
    dst: str
    dst_port: str
    policy: EdgePolicy = EdgePolicy.BLOCK
    capacity: int = DEFAULT_CAPACITY
    feedback: bool = False

    def __str__(self) -> str:
        return f"{self.src}.{self.src_port} -> {self.dst}.{self.dst_port}"


@dataclass(slots=True)
class Graph:
    """A checked graph, ready to run as any number of sessions."""

    name: str
    description: str
    version: str
    nodes: dict[str, ResolvedNode]
    edges: list[ResolvedEdge]
    source: str
    #: Identifies what runs (node types, validated params, edges), not the name or the file's
    #: spelling: two files that run the same graph share it; any change to what runs changes it.
    variant_hash: str
    files: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def to_networkx(self) -> nx.MultiDiGraph:
        import networkx as nx

        g = nx.MultiDiGraph(name=self.name)
        for node in self.nodes.values():
            g.add_node(node.id, type=node.type_name)
        for e in self.edges:
            g.add_edge(
                e.src,
                e.dst,
                src_port=e.src_port,
                dst_port=e.dst_port,
                policy=e.policy.value,
                capacity=e.capacity,
                feedback=e.feedback,
            )
        return g


# ---------------------------------------------------------------------------------------------------
# Layers: one file's data and positions, merged along the extends chain.


@dataclass(slots=True)
class _Layer:
    data: dict[str, Any]
    marks: dict[PathKey, Mark]
    key_marks: dict[PathKey, Mark]
    styles: dict[PathKey, str | None]
    file: str
    files: list[str]

    def mark(self, path: PathKey, *, key: bool = False) -> Mark:
        return closest_mark(self.marks, self.key_marks, self.file, path, key=key)

    def text_mark(self, path: PathKey, offset: int) -> Mark:
        """The position ``offset`` characters into the string scalar at ``path``."""
        mark = self.mark(path)
        if path not in self.marks:
            return mark
        style = self.styles.get(path)
        if style is None:
            return mark.shifted(offset)
        if style in ("'", '"'):
            return mark.shifted(offset + 1)
        return mark  # block scalars: the text does not start where the scalar does


def _copy_marks(
    src: dict[PathKey, _V], src_prefix: PathKey, dst: dict[PathKey, _V], dst_prefix: PathKey
) -> None:
    n = len(src_prefix)
    for path, mark in src.items():
        if path[:n] == src_prefix:
            dst[dst_prefix + path[n:]] = mark


def _edge_nodes(item: Any) -> tuple[str, str] | None:
    text = item.get("edge") if isinstance(item, dict) else item
    if not isinstance(text, str):
        return None
    m = EDGE_RE.match(text)
    return (m["src"], m["dst"]) if m else None


def _merge(base: _Layer, over: _Layer, over_path: Path, issues: list[GraphIssue]) -> _Layer:
    data: dict[str, Any] = {}
    marks: dict[PathKey, Mark] = {}
    keys: dict[PathKey, Mark] = {}
    styles: dict[PathKey, str | None] = {}

    def copy_from(layer: _Layer, src: PathKey, dst: PathKey) -> None:
        _copy_marks(layer.marks, src, marks, dst)
        _copy_marks(layer.key_marks, src, keys, dst)
        _copy_marks(layer.styles, src, styles, dst)

    # Metadata and any other top-level keys (unknown ones too, so the structure check reports them):
    # the variant's value wins.
    for layer in (base, over):
        for k in layer.data:
            if k in ("nodes", "edges", "extends"):
                continue
            data[k] = layer.data[k]
            for d in (marks, keys, styles):
                for p in [p for p in d if p[:1] == (k,)]:
                    del d[p]
            copy_from(layer, (k,), (k,))
    if "graph" not in over.data:
        data["graph"] = over_path.stem  # a variant is its own graph; its file names it
    nodes: dict[str, Any] = {}
    base_nodes = base.data.get("nodes") if isinstance(base.data.get("nodes"), dict) else {}
    over_nodes = over.data.get("nodes") if isinstance(over.data.get("nodes"), dict) else {}
    removed: set[str] = set()
    for nid, spec in (base_nodes or {}).items():
        nodes[nid] = copy.deepcopy(spec)
        copy_from(base, ("nodes", nid), ("nodes", nid))
    for nid, spec in (over_nodes or {}).items():
        prefix: PathKey = ("nodes", nid)
        old = nodes.get(nid)
        if spec is None:
            if nid in nodes:
                del nodes[nid]
                removed.add(nid)
                for d in (marks, keys, styles):
                    for p in [p for p in d if p[:2] == prefix]:
                        del d[p]
            else:
                known = list(nodes)
                issues.append(
                    GraphIssue(
                        over.mark(prefix),
                        format_path(prefix),
                        f"cannot remove node {nid!r}: the base graph has no such node; expected one of: "
                        f"{_one_of(known)}{_did_you_mean(nid, known)}",
                    )
                )
            continue
        replace = not (isinstance(spec, dict) and isinstance(old, dict)) or (
            "type" in spec and spec["type"] != old.get("type")
        )
        if replace:
            nodes[nid] = copy.deepcopy(spec)
            for d in (marks, keys, styles):
                for p in [p for p in d if p[:2] == prefix]:
                    del d[p]
        else:
            assert isinstance(spec, dict) and isinstance(old, dict)
            merged = dict(old)
            for k, v in spec.items():
                if k == "params" and isinstance(v, dict) and isinstance(old.get("params"), dict):
                    merged["params"] = {**old["params"], **copy.deepcopy(v)}
                else:
                    merged[k] = copy.deepcopy(v)
            nodes[nid] = merged
        copy_from(over, prefix, prefix)
    data["nodes"] = nodes
    marks[("nodes",)] = over.marks.get(("nodes",), base.marks.get(("nodes",), Mark(over.file, 1, 1)))
    edges: list[Any] = []
    for layer in (base, over):
        items = layer.data.get("edges")
        if not isinstance(items, list):
            continue
        for i, item in enumerate(items):
            ends = _edge_nodes(item)
            if layer is base and ends and (ends[0] in removed or ends[1] in removed):
                continue  # removing a node removes its edges
            copy_from(layer, ("edges", i), ("edges", len(edges)))
            edges.append(copy.deepcopy(item))
    data["edges"] = edges
    return _Layer(data, marks, keys, styles, over.file, [*base.files, *over.files])


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _load_layers(
    path: Path, chain: list[Path], issues: list[GraphIssue], text: str | None = None
) -> _Layer | None:
    file = str(path)
    doc, errs = parse_yaml(text if text is not None else path.read_text(encoding="utf-8"), file)
    issues.extend(errs)
    if doc is None:
        return None
    if not isinstance(doc.data, dict):
        issues.append(
            GraphIssue(
                doc.mark(()),
                "",
                f"the file holds {type(doc.data).__name__} {_short(doc.data)}; "
                "expected a mapping with 'graph', 'nodes' and 'edges'",
            )
        )
        return None
    layer = _Layer(doc.data, doc.marks, doc.key_marks, doc.scalar_styles, file, [file])
    ext = doc.data.get("extends")
    if ext is None:
        return layer
    mark = doc.mark(("extends",))
    if not isinstance(ext, str):
        return layer  # reported by the structure check
    target = (path.parent / ext).resolve()
    if target in chain:
        loop = " -> ".join(p.name for p in [*chain[chain.index(target) :], target])
        issues.append(
            GraphIssue(
                mark,
                "extends",
                f"extends loop: {loop}; expected a chain of `extends` that ends at a graph without one",
            )
        )
        return None
    if not target.is_file():
        folder = target.parent
        siblings = (
            sorted(p.name for p in folder.glob("*.y*ml") if p.resolve() not in chain)
            if folder.is_dir()
            else []
        )
        hint = closest(target.name, siblings)
        msg = (
            f"extends target {ext!r} not found (no file {_display(target)}); expected the path of a "
            "graph file, relative to this file"
        )
        if hint:
            shown = str(Path(ext).parent / hint) if Path(ext).parent != Path(".") else hint
            msg += f"; did you mean {shown!r}?"
        issues.append(GraphIssue(mark, "extends", msg))
        return None
    base = _load_layers(target, [*chain, target], issues)
    if base is None:
        return None
    return _merge(base, layer, path, issues)


# ---------------------------------------------------------------------------------------------------
# Checks.


def _did_you_mean(name: str, candidates: list[str]) -> str:
    hint = closest(name, candidates)
    return f"; did you mean {hint!r}?" if hint else ""


def _one_of(candidates: list[str]) -> str:
    return ", ".join(candidates) if candidates else "(none)"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_COMPARISONS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of")


def _expected(err: Any) -> str:
    """Pydantic's complaint as what the user should write instead: ``expected ...``."""
    msg: str = err["msg"]
    etype: str = err["type"]
    if etype in _COMPARISONS and msg.startswith("Input should be "):
        text = "expected a value " + msg.removeprefix("Input should be ")
    elif msg.startswith("Input should be "):
        text = "expected " + msg.removeprefix("Input should be ")
    elif msg.startswith(("String should have ", "List should have ", "Dictionary should have ")):
        kind, _, rest = msg.partition(" should have ")
        text = f"expected a {kind.lower()} with {rest}"
    elif msg.startswith("Value error, "):
        text = "expected a valid value: " + msg.removeprefix("Value error, ")
    else:
        text = f"expected a valid value ({msg})"
    if etype in ("enum", "literal_error") and isinstance(err.get("input"), str):
        choices = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        text += _did_you_mean(err["input"], choices)
    return text


_UNION_TAGS = {"str", "constrained-str", "EdgeSpec", "NodeSpec", "none"}


def _fields_at(parent: PathKey) -> list[str]:
    """The fields the graph-file model allows in the mapping at ``parent``."""
    if not parent:
        return list(GraphFile.model_fields)
    if parent[0] == "nodes" and len(parent) == 2:
        return list(NodeSpec.model_fields)
    if parent[0] == "edges" and len(parent) == 2:
        return list(EdgeSpec.model_fields)
    field = GraphFile.model_fields.get(str(parent[0]))
    if field is None or len(parent) != 1:
        return []
    todo: list[Any] = [field.annotation]
    while todo:
        t = todo.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            return list(t.model_fields)
        todo.extend(get_args(t))
    return []


_EDGE_FORM = "'node.port -> node.port'"
_LOOSE_DST = re.compile(r"([A-Za-z_][\w-]*)\.(\w+)\W*$")  # the target of a malformed edge


def _structure_issues(layer: _Layer) -> list[GraphIssue]:
    try:
        GraphFile.model_validate(layer.data)
    except ValidationError as exc:
        errors = exc.errors()
    else:
        return []
    out: list[GraphIssue] = []
    seen: set[PathKey] = set()

    def add(mark: Mark, loc: PathKey, message: str) -> None:
        if loc not in seen:
            seen.add(loc)
            out.append(GraphIssue(mark, format_path(loc), message))

    for err in errors:
        full = tuple(err["loc"])
        loc: PathKey = tuple(p for p in full if p not in _UNION_TAGS)
        if loc[:1] == ("edges",) and len(loc) >= 2 and isinstance(loc[1], int):
            item = layer.data["edges"][loc[1]]
            branch = full[2] if len(full) > 2 else None
            if isinstance(item, str):
                if branch != "EdgeSpec":
                    add(layer.mark(loc[:2]), loc[:2], f"malformed edge {item!r}; expected {_EDGE_FORM}")
                continue
            if not isinstance(item, dict):
                add(
                    layer.mark(loc[:2]),
                    loc[:2],
                    f"invalid edge {_short(item)}; expected {_EDGE_FORM} or a mapping with 'edge:'",
                )
                continue
            if branch != "EdgeSpec":
                continue
            if loc[2:] == ("edge",) and isinstance(item.get("edge"), str):
                add(layer.mark(loc), loc, f"malformed edge {item['edge']!r}; expected {_EDGE_FORM}")
                continue
        if loc[:1] == ("nodes",) and len(loc) == 3 and loc[2] == "[key]":
            nid = str(loc[1])
            add(
                layer.mark(loc[:2], key=True),
                loc[:2],
                f"invalid node id {nid!r}; expected letters, digits, '_' or '-', starting with a letter or '_'",
            )
            continue
        if err["type"] == "extra_forbidden":
            name = str(loc[-1])
            allowed = _fields_at(loc[:-1])
            want = f"one of: {_one_of(allowed)}{_did_you_mean(name, allowed)}" if allowed else "a known field"
            add(layer.mark(loc, key=True), loc, f"unknown field {name!r}; expected {want}")
        elif err["type"] == "missing":
            name = str(loc[-1])
            if name == "type":
                want = "a registered node type (see `ah nodes`)"
            elif name == "edge":
                want = f"edge: {_EDGE_FORM}"
            else:
                want = f"a value for {name!r}"
            add(layer.mark(loc[:-1]), loc, f"missing required field {name!r}; expected {want}")
        else:
            add(layer.mark(loc), loc, f"invalid value {_short(err['input'])}; {_expected(err)}")
    return out


def _param_issues(
    node_id: str, cls: type[Node[Any]], type_name: str, params: dict[str, Any], layer: _Layer
) -> tuple[Params | None, list[GraphIssue]]:
    model = cls.params_model
    try:
        return model.model_validate(params), []
    except ValidationError as exc:
        out: list[GraphIssue] = []
        fields = model.model_fields
        allowed = list(fields)
        for err in exc.errors():
            loc: PathKey = ("nodes", node_id, "params", *err["loc"])
            name = str(err["loc"][-1]) if err["loc"] else ""
            top = len(err["loc"]) == 1
            if err["type"] == "extra_forbidden":
                if top:
                    msg = (
                        f"unknown param {name!r} for {type_name}; expected one of: {_one_of(allowed)}"
                        f"{_did_you_mean(name, allowed)}"
                    )
                else:
                    msg = f"unknown field {name!r} in a param of {type_name}; expected a known field"
                out.append(GraphIssue(layer.mark(loc, key=True), format_path(loc), msg))
            elif err["type"] == "missing":
                what = ""
                if top and name in fields:
                    ann = fields[name].annotation
                    what = f" ({getattr(ann, '__name__', str(ann))})"
                out.append(
                    GraphIssue(
                        layer.mark(loc[:-1]),
                        format_path(loc),
                        f"missing required param {name!r} for {type_name}; expected a value{what} "
                        f"under params.{name}",
                    )
                )
            else:
                out.append(
                    GraphIssue(
                        layer.mark(loc),
                        format_path(loc),
                        f"invalid value {_short(err['input'])} for {type_name}; {_expected(err)}",
                    )
                )
        return None, out


def _check(layer: _Layer, registry: NodeRegistry) -> tuple[Graph | None, list[GraphIssue]]:
    issues = _structure_issues(layer)
    data = layer.data
    nodes_raw = data.get("nodes") if isinstance(data.get("nodes"), dict) else {}
    assert isinstance(nodes_raw, dict)
    types = registry.names()
    classes: dict[str, tuple[type[Node[Any]], str]] = {}  # nodes whose type is known
    params_ok: dict[str, Params] = {}
    for nid, spec in nodes_raw.items():
        if spec is None:
            issues.append(
                GraphIssue(
                    layer.mark(("nodes", nid)),
                    format_path(("nodes", nid)),
                    f"node {nid!r} is empty; expected a mapping with 'type' and 'params' "
                    "(`null` removes a node only in a graph that `extends` one which has it)",
                )
            )
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            continue  # reported by the structure check
        tname = spec["type"]
        tpath: PathKey = ("nodes", nid, "type")
        if tname not in registry:
            issues.append(
                GraphIssue(
                    layer.mark(tpath),
                    format_path(tpath),
                    f"unknown node type {tname!r}; expected a registered type (see `ah nodes`)"
                    f"{_did_you_mean(tname, types)}",
                )
            )
            continue
        try:
            info = registry.get(tname)
        except NodeLoadError as exc:
            msg = f"{exc}; expected the package that provides {tname!r} to import (reinstall it?)"
            issues.append(GraphIssue(layer.mark(tpath), format_path(tpath), msg))
            continue
        classes[nid] = (info.cls, tname)
        params_raw = spec.get("params")
        if params_raw is None:
            params_raw = {}
        if not isinstance(params_raw, dict):
            continue  # reported by the structure check
        params, errs = _param_issues(nid, info.cls, tname, params_raw, layer)
        issues.extend(errs)
        if params is not None:
            params_ok[nid] = params

    known_ids = list(nodes_raw)
    edges: list[ResolvedEdge] = []
    edge_index: dict[int, int] = {}  # resolved edge -> its position in the file
    inbound: dict[tuple[str, str], int] = {}
    attempted: set[tuple[str, str]] = set()  # inputs some edge names, valid or not
    misnamed_inputs: set[str] = set()  # nodes with an edge into an input they do not have
    edges_raw = data.get("edges") if isinstance(data.get("edges"), list) else []
    for i, item in enumerate(edges_raw or []):
        text = item.get("edge") if isinstance(item, dict) else item
        if not isinstance(text, str):
            continue
        m = EDGE_RE.match(text)
        if m is None:
            loose = _LOOSE_DST.search(text)
            if loose:  # reported by the structure check; its target is still no unconnected input
                attempted.add((loose[1], loose[2]))
            continue
        epath: PathKey = ("edges", i, "edge") if isinstance(item, dict) else ("edges", i)
        emark = layer.mark(epath)
        edge_text = f"{m['src']}.{m['sp']} -> {m['dst']}.{m['dp']}"
        attempted.add((m["dst"], m["dp"]))
        ok = True
        for end, port_group, which in (("src", "sp", "outputs"), ("dst", "dp", "inputs")):
            nid, port = m[end], m[port_group]
            if nid not in nodes_raw:
                issues.append(
                    GraphIssue(
                        layer.text_mark(epath, m.start(end)),
                        format_path(epath),
                        f"unknown node {nid!r} in edge {edge_text!r}; expected one of: "
                        f"{_one_of(known_ids)}{_did_you_mean(nid, known_ids)}",
                    )
                )
                ok = False
                continue
            entry = classes.get(nid)
            if entry is None:
                ok = False  # its type is unknown, which is reported already
                continue
            cls, tname = entry
            ports = cls.outputs if which == "outputs" else cls.inputs
            if port not in ports:
                direction = "output" if which == "outputs" else "input"
                other = cls.inputs if which == "outputs" else cls.outputs
                extra = (
                    f" ({port!r} is an {'input' if which == 'outputs' else 'output'} port)"
                    if port in other
                    else ""
                )
                issues.append(
                    GraphIssue(
                        layer.text_mark(epath, m.start(port_group)),
                        format_path(epath),
                        f"node {nid!r} ({tname}) has no {direction} port {port!r}{extra}; "
                        f"expected one of: {_one_of(list(ports))}"
                        f"{_did_you_mean(port, list(ports))}",
                    )
                )
                if which == "inputs":
                    misnamed_inputs.add(nid)
                ok = False
        if not ok:
            continue
        src_cls, dst_cls = classes[m["src"]][0], classes[m["dst"]][0]
        out_spec, in_spec = src_cls.outputs[m["sp"]], dst_cls.inputs[m["dp"]]
        if not issubclass(out_spec.frame_type, in_spec.frame_type):
            issues.append(
                GraphIssue(
                    emark,
                    format_path(epath),
                    f"type mismatch: {m['src']}.{m['sp']} sends {out_spec.type_name} but "
                    f"{m['dst']}.{m['dp']} accepts {in_spec.type_name}; expected an output of "
                    f"type {in_spec.type_name} (or a subclass)",
                )
            )
            continue
        opts = item if isinstance(item, dict) else {}
        try:
            policy = EdgePolicy(opts.get("policy", "block"))
        except ValueError:
            continue  # reported by the structure check
        cap = opts.get("capacity", DEFAULT_CAPACITY)
        edge = ResolvedEdge(
            m["src"],
            m["sp"],
            m["dst"],
            m["dp"],
            policy,
            cap if isinstance(cap, int) and cap >= 1 else DEFAULT_CAPACITY,
            bool(opts.get("feedback", False)),
        )
        key = (edge.dst, edge.dst_port)
        if key in inbound:
            prev = edges[inbound[key]]
            if str(prev) == str(edge):
                issues.append(
                    GraphIssue(
                        emark, format_path(epath), f"duplicate edge {str(edge)!r}; expected each edge once"
                    )
                )
                continue
            if (prev.policy, prev.capacity) != (edge.policy, edge.capacity):
                issues.append(
                    GraphIssue(
                        emark,
                        format_path(epath),
                        f"edges into {edge.dst}.{edge.dst_port} disagree on policy/capacity "
                        f"({prev.policy.value}/{prev.capacity} vs {edge.policy.value}/"
                        f"{edge.capacity}); expected one setting per input port",
                    )
                )
                continue
        else:
            inbound[key] = len(edges)
        edge_index[len(edges)] = i
        edges.append(edge)

    # A required input no edge names (a misnamed or mistyped edge into it is reported already).
    for nid, (cls, tname) in classes.items():
        if nid in misnamed_inputs:
            continue
        for pname, spec in cls.inputs.items():
            if not spec.required or (nid, pname) in attempted:
                continue
            candidates = [
                f"{oid}.{op}"
                for oid, (ocls, _) in classes.items()
                if oid != nid
                for op, ospec in ocls.outputs.items()
                if issubclass(ospec.frame_type, spec.frame_type)
            ]
            hint = f", e.g. '{candidates[0]} -> {nid}.{pname}'" if candidates else ""
            issues.append(
                GraphIssue(
                    layer.mark(("nodes", nid), key=True),
                    format_path(("nodes", nid)),
                    f"required input {pname!r} ({spec.type_name}) of node {nid!r} "
                    f"({tname}) is not connected; expected an edge into {nid}.{pname}{hint}",
                )
            )

    for names, closing in _cycles(edges):
        fi = edge_index[closing]
        issues.append(
            GraphIssue(
                layer.mark(("edges", fi)),
                format_path(("edges", fi)),
                f"undeclared cycle {' -> '.join(names)}; expected 'feedback: true' on one of its edges "
                "if the loop is intended",
            )
        )

    if issues:
        return None, issues
    resolved = {
        nid: ResolvedNode(nid, tname, cls, params_ok[nid], layer.mark(("nodes", nid), key=True))
        for nid, (cls, tname) in classes.items()
    }
    graph = Graph(
        name=str(data.get("graph") or ""),
        description=str(data.get("description", "")),
        version=str(data.get("version", "1")),
        nodes=resolved,
        edges=edges,
        source=layer.file,
        variant_hash=_variant_hash(resolved, edges),
        files=layer.files,
        data=data,
    )
    return graph, []


def _cycles(edges: list[ResolvedEdge]) -> list[tuple[list[str], int]]:
    """One cycle per group of nodes that reach each other without a feedback edge: the shortest
    through the group's first node, as node names and the index of the edge that closes it."""
    adj: dict[str, list[tuple[str, int]]] = {}
    for j, e in enumerate(edges):
        if e.feedback:
            continue
        adj.setdefault(e.src, []).append((e.dst, j))
        adj.setdefault(e.dst, [])

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [d for d, _ in adj[start]]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(d for d, _ in adj[n])
        return seen

    reach = {n: reachable(n) for n in adj}
    done: set[str] = set()
    out: list[tuple[list[str], int]] = []
    for start in adj:
        if start in done or start not in reach[start]:
            continue
        group = {n for n in reach[start] if start in reach[n]}
        done |= group
        prev: dict[str, str] = {}
        queue = deque([start])
        while queue:
            n = queue.popleft()
            hit = next((j for d, j in adj[n] if d == start), None)
            if hit is not None:
                path = [n]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                out.append(([*reversed(path), start], hit))
                break
            for d, _ in adj[n]:
                if d in group and d not in prev and d != start:
                    prev[d] = n
                    queue.append(d)
    return out


def _variant_hash(nodes: dict[str, ResolvedNode], edges: list[ResolvedEdge]) -> str:
    """What runs: node types, their validated params (defaults included) and the edges.

    Names, descriptions, comments, key order and how a file spells its params do not count, so
    two files that run the same graph share a hash and any change to what runs changes it.
    """
    canonical = {
        "nodes": {
            nid: {"type": n.type_name, "params": n.params.model_dump(mode="json")}
            for nid, n in sorted(nodes.items())
        },
        "edges": sorted([str(e), e.policy.value, e.capacity, e.feedback] for e in edges),
    }
    text = json.dumps(canonical, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_graph(
    path: str | Path,
    registry: NodeRegistry | None = None,
    *,
    text: str | None = None,
) -> tuple[Graph | None, list[GraphIssue]]:
    """Load and check a graph file. Returns the graph, or ``None`` and every issue found.

    Issues are sorted by position, those in ``path`` itself first, then those in its bases.
    """
    p = Path(path)
    issues: list[GraphIssue] = []
    if text is None and not p.is_file():
        return None, [GraphIssue(Mark(str(p), 1, 1), "", "file not found; expected a graph file (.yaml)")]
    graph: Graph | None = None
    layer = _load_layers(p.resolve() if text is None else p, [p.resolve()], issues, text=text)
    if layer is not None:
        graph, more = _check(layer, registry or default_registry())
        issues.extend(more)
    if issues:
        shown = [_relabel(i, p) for i in issues]
        shown.sort(key=lambda i: (i.mark.file != str(p), i.mark.file, i.mark.line, i.mark.column))
        return None, shown
    assert graph is not None
    # Issues and names use the path the user typed; ``source`` is where the file really is.
    graph.source = str(p.resolve()) if text is None else str(p)
    graph.name = str(graph.data.get("graph") or p.stem)
    return graph, []


def _relabel(issue: GraphIssue, typed: Path) -> GraphIssue:
    """Show files relative to the directory the user works in when possible."""
    f = Path(issue.mark.file)
    try:
        rel = f.relative_to(Path.cwd())
    except ValueError:
        rel = f
    if f == typed.resolve():
        rel = typed
    return GraphIssue(Mark(str(rel), issue.mark.line, issue.mark.column), issue.path, issue.message)


def load_graph(path: str | Path, registry: NodeRegistry | None = None, *, text: str | None = None) -> Graph:
    """Load and check a graph; raises :class:`GraphValidationError` listing every issue."""
    graph, issues = check_graph(path, registry, text=text)
    if graph is None:
        raise GraphValidationError(issues)
    return graph
