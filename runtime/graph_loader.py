"""Load, merge and check graph files, reporting every problem with file, line, column and path.

A graph is checked in one pass that collects all issues (``ah validate`` prints them together):
YAML syntax, ``extends`` chains, the file's structure (:mod:`ah.runtime.graph_model`), node types,
node params (each type's own params model), ports, edge types, required inputs and cycles.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
from pydantic import ValidationError

from ah.runtime.channel import EdgePolicy
from ah.runtime.graph_model import DEFAULT_CAPACITY, EDGE_RE, GraphFile
from ah.runtime.node import Node, Params
from ah.runtime.registry import NodeLoadError, NodeRegistry, closest, default_registry
from ah.runtime.yaml_source import GraphIssue, Mark, PathKey, format_path, parse_yaml

META_KEYS = ("graph", "description", "version")


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
    variant_hash: str
    files: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def to_networkx(self) -> nx.MultiDiGraph:
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
    file: str
    files: list[str]

    def mark(self, path: PathKey, *, key: bool = False) -> Mark:
        p = tuple(path)
        while True:
            if key and p in self.key_marks:
                return self.key_marks[p]
            if p in self.marks:
                return self.marks[p]
            if p in self.key_marks:
                return self.key_marks[p]
            if not p:
                return Mark(self.file, 1, 1)
            p = p[:-1]


def _copy_marks(
    src: dict[PathKey, Mark], src_prefix: PathKey, dst: dict[PathKey, Mark], dst_prefix: PathKey
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


def _merge(base: _Layer, over: _Layer, over_path: Path) -> _Layer:
    data: dict[str, Any] = {}
    marks: dict[PathKey, Mark] = {}
    keys: dict[PathKey, Mark] = {}
    for k in META_KEYS:
        for layer in (base, over):
            if k in layer.data:
                data[k] = layer.data[k]
                _copy_marks(layer.marks, (k,), marks, (k,))
                _copy_marks(layer.key_marks, (k,), keys, (k,))
    if "graph" not in over.data:
        data["graph"] = over_path.stem  # a variant is its own graph; its file names it
    nodes: dict[str, Any] = {}
    base_nodes = base.data.get("nodes") if isinstance(base.data.get("nodes"), dict) else {}
    over_nodes = over.data.get("nodes") if isinstance(over.data.get("nodes"), dict) else {}
    removed: set[str] = set()
    for nid, spec in (base_nodes or {}).items():
        nodes[nid] = copy.deepcopy(spec)
        _copy_marks(base.marks, ("nodes", nid), marks, ("nodes", nid))
        _copy_marks(base.key_marks, ("nodes", nid), keys, ("nodes", nid))
    for nid, spec in (over_nodes or {}).items():
        prefix: PathKey = ("nodes", nid)
        old = nodes.get(nid)
        if spec is None and nid in nodes:
            del nodes[nid]
            removed.add(nid)
            continue
        replace = not (isinstance(spec, dict) and isinstance(old, dict)) or (
            "type" in spec and spec["type"] != old.get("type")
        )
        if replace:
            nodes[nid] = copy.deepcopy(spec)
            for d in (marks, keys):
                for p in [p for p in d if p[:2] == prefix]:
                    del d[p]
        else:
            assert isinstance(spec, dict) and isinstance(old, dict)
            merged = dict(old)
            for k, v in spec.items():
                if k == "params" and isinstance(v, dict) and isinstance(old.get("params"), dict):
                    merged["params"] = {**old["params"], **v}
                else:
                    merged[k] = copy.deepcopy(v)
            nodes[nid] = merged
        _copy_marks(over.marks, prefix, marks, prefix)
        _copy_marks(over.key_marks, prefix, keys, prefix)
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
                continue
            _copy_marks(layer.marks, ("edges", i), marks, ("edges", len(edges)))
            edges.append(copy.deepcopy(item))
    data["edges"] = edges
    return _Layer(data, marks, keys, over.file, [*base.files, *over.files])


def _load_layers(
    path: Path, chain: list[Path], issues: list[GraphIssue], text: str | None = None
) -> _Layer | None:
    file = str(path)
    doc, errs = parse_yaml(text if text is not None else path.read_text(encoding="utf-8"), file)
    issues.extend(errs)
    if doc is None:
        return None
    if not isinstance(doc.data, dict):
        issues.append(GraphIssue(doc.mark(()), "", "expected a mapping with 'graph', 'nodes' and 'edges'"))
        return None
    layer = _Layer(doc.data, doc.marks, doc.key_marks, file, [file])
    ext = doc.data.get("extends")
    if ext is None:
        return layer
    mark = doc.mark(("extends",))
    if not isinstance(ext, str):
        issues.append(GraphIssue(mark, "extends", "expected the path of a base graph file (a string)"))
        return layer
    target = (path.parent / ext).resolve()
    if target in chain:
        loop = " -> ".join(p.name for p in [*chain[chain.index(target) :], target])
        issues.append(
            GraphIssue(mark, "extends", f"extends loop: {loop}; expected a chain of base graphs that ends")
        )
        return None
    if not target.is_file():
        siblings = sorted(p.name for p in path.parent.glob("*.y*ml") if p.resolve() != path.resolve())
        hint = closest(Path(ext).name, siblings)
        msg = (
            f"extends target {ext!r} not found (looked for {target}); expected an existing graph file "
            "relative to this file"
        )
        if hint:
            msg += f"; did you mean {hint!r}?"
        issues.append(GraphIssue(mark, "extends", msg))
        return None
    base = _load_layers(target, [*chain, target], issues)
    if base is None:
        return None
    return _merge(base, layer, path)


# ---------------------------------------------------------------------------------------------------
# Checks.


def _did_you_mean(name: str, candidates: list[str]) -> str:
    hint = closest(name, candidates)
    return f"; did you mean {hint!r}?" if hint else ""


def _one_of(candidates: list[str]) -> str:
    return ", ".join(candidates) if candidates else "(none)"


def _structure_issues(layer: _Layer) -> list[GraphIssue]:
    try:
        GraphFile.model_validate(layer.data)
    except ValidationError as exc:
        out: list[GraphIssue] = []
        seen: set[PathKey] = set()
        fields = list(GraphFile.model_fields)
        for err in exc.errors():
            raw = [p for p in err["loc"] if p not in ("str", "EdgeSpec", "NodeSpec", "constrained-str")]
            loc: PathKey = tuple(raw)
            if loc[:1] == ("edges",) and len(loc) >= 2:
                item = layer.data["edges"][loc[1]] if isinstance(loc[1], int) else None
                branch = err["loc"][2] if len(err["loc"]) > 2 else None
                if isinstance(item, str) and branch == "EdgeSpec":
                    continue
                if isinstance(item, dict) and branch in ("str", "constrained-str"):
                    continue
                if isinstance(item, str):
                    out.append(
                        GraphIssue(
                            layer.mark(loc[:2]),
                            format_path(loc[:2]),
                            f"malformed edge {item!r}; expected 'node.port -> node.port'",
                        )
                    )
                    seen.add(loc[:2])
                    continue
            if loc in seen:
                continue
            seen.add(loc)
            if err["type"] == "extra_forbidden":
                name = str(loc[-1])
                parent = loc[:-1]
                allowed = (
                    fields
                    if not parent
                    else (
                        ["type", "params", "description"]
                        if parent[:1] == ("nodes",)
                        else ["edge", "policy", "capacity", "feedback"]
                    )
                )
                msg = f"unknown field {name!r}; expected one of: {_one_of(allowed)}{_did_you_mean(name, allowed)}"
                out.append(GraphIssue(layer.mark(loc, key=True), format_path(loc), msg))
            elif err["type"] == "missing":
                out.append(
                    GraphIssue(layer.mark(loc[:-1]), format_path(loc), f"missing required field {loc[-1]!r}")
                )
            else:
                out.append(
                    GraphIssue(
                        layer.mark(loc), format_path(loc), f"invalid value {err['input']!r}: {err['msg']}"
                    )
                )
        return out
    return []


def _param_issues(
    node_id: str, cls: type[Node[Any]], type_name: str, params: dict[str, Any], layer: _Layer
) -> tuple[Params | None, list[GraphIssue]]:
    model = cls.params_model
    try:
        return model.model_validate(params), []
    except ValidationError as exc:
        out: list[GraphIssue] = []
        allowed = list(model.model_fields)
        for err in exc.errors():
            loc: PathKey = ("nodes", node_id, "params", *err["loc"])
            if err["type"] == "extra_forbidden":
                name = str(err["loc"][-1])
                msg = (
                    f"unknown param {name!r} for {type_name}; expected one of: {_one_of(allowed)}"
                    f"{_did_you_mean(name, allowed)}"
                )
                out.append(GraphIssue(layer.mark(loc, key=True), format_path(loc), msg))
            elif err["type"] == "missing":
                out.append(
                    GraphIssue(
                        layer.mark(("nodes", node_id)),
                        format_path(loc),
                        f"missing required param {err['loc'][-1]!r} for {type_name}",
                    )
                )
            else:
                out.append(
                    GraphIssue(
                        layer.mark(loc),
                        format_path(loc),
                        f"invalid value {err['input']!r} for {type_name}: {err['msg']}",
                    )
                )
        return None, out


def _check(layer: _Layer, registry: NodeRegistry, source: str) -> tuple[Graph | None, list[GraphIssue]]:
    issues = _structure_issues(layer)
    data = layer.data
    nodes_raw = data.get("nodes") if isinstance(data.get("nodes"), dict) else {}
    assert isinstance(nodes_raw, dict)
    types = registry.names()
    resolved: dict[str, ResolvedNode] = {}
    for nid, spec in nodes_raw.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
            continue
        tname = spec["type"]
        if tname not in registry:
            issues.append(
                GraphIssue(
                    layer.mark(("nodes", nid, "type")),
                    f"nodes.{nid}.type",
                    f"unknown node type {tname!r}; expected a registered type (see `ah nodes`)"
                    f"{_did_you_mean(tname, types)}",
                )
            )
            continue
        try:
            info = registry.get(tname)
        except NodeLoadError as exc:
            issues.append(GraphIssue(layer.mark(("nodes", nid, "type")), f"nodes.{nid}.type", str(exc)))
            continue
        params_raw = spec.get("params") or {}
        if not isinstance(params_raw, dict):
            continue  # reported by the structure check
        params, errs = _param_issues(nid, info.cls, tname, params_raw, layer)
        issues.extend(errs)
        if params is not None:
            resolved[nid] = ResolvedNode(nid, tname, info.cls, params, layer.mark(("nodes", nid), key=True))

    known_ids = list(nodes_raw)
    edges: list[ResolvedEdge] = []
    edge_index: dict[int, int] = {}  # resolved edge -> its position in the file
    inbound: dict[tuple[str, str], int] = {}
    edges_raw = data.get("edges") if isinstance(data.get("edges"), list) else []
    for i, item in enumerate(edges_raw or []):
        text = item.get("edge") if isinstance(item, dict) else item
        if not isinstance(text, str):
            continue
        m = EDGE_RE.match(text)
        if m is None:
            continue  # reported by the structure check
        epath: PathKey = ("edges", i, "edge") if isinstance(item, dict) else ("edges", i)
        emark = layer.mark(epath)
        plain = isinstance(item, str)
        ok = True
        for end, port_group, which in (("src", "sp", "outputs"), ("dst", "dp", "inputs")):
            nid, port = m[end], m[port_group]
            col = emark.shifted(m.start(end) + 0) if plain else emark
            if nid not in nodes_raw:
                issues.append(
                    GraphIssue(
                        col,
                        format_path(epath),
                        f"unknown node {nid!r} in edge {text.strip()!r}; expected one of: "
                        f"{_one_of(known_ids)}{_did_you_mean(nid, known_ids)}",
                    )
                )
                ok = False
                continue
            node = resolved.get(nid)
            if node is None:
                ok = False
                continue
            ports = node.cls.outputs if which == "outputs" else node.cls.inputs
            if port not in ports:
                pcol = emark.shifted(m.start(port_group)) if plain else emark
                direction = "output" if which == "outputs" else "input"
                other = node.cls.inputs if which == "outputs" else node.cls.outputs
                extra = (
                    f" ({port!r} is an {'input' if which == 'outputs' else 'output'} port)"
                    if port in other
                    else ""
                )
                issues.append(
                    GraphIssue(
                        pcol,
                        format_path(epath),
                        f"node {nid!r} ({node.type_name}) has no {direction} port {port!r}{extra}; "
                        f"expected one of: {_one_of(list(ports))}"
                        f"{_did_you_mean(port, list(ports))}",
                    )
                )
                ok = False
        if not ok:
            continue
        src, dst = resolved[m["src"]], resolved[m["dst"]]
        out_spec, in_spec = src.cls.outputs[m["sp"]], dst.cls.inputs[m["dp"]]
        if not issubclass(out_spec.frame_type, in_spec.frame_type):
            issues.append(
                GraphIssue(
                    emark,
                    format_path(epath),
                    f"type mismatch: {m['src']}.{m['sp']} sends {out_spec.type_name} but "
                    f"{m['dst']}.{m['dp']} expects {in_spec.type_name}; expected an output of "
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

    connected = {(e.dst, e.dst_port) for e in edges}
    for nid, node in resolved.items():
        for pname, spec in node.cls.inputs.items():
            if spec.required and (nid, pname) not in connected:
                candidates = [
                    f"{o.id}.{op}"
                    for o in resolved.values()
                    if o.id != nid
                    for op, ospec in o.cls.outputs.items()
                    if issubclass(ospec.frame_type, spec.frame_type)
                ]
                hint = f", e.g. '{candidates[0]} -> {nid}.{pname}'" if candidates else ""
                issues.append(
                    GraphIssue(
                        layer.mark(("nodes", nid), key=True),
                        f"nodes.{nid}",
                        f"required input {pname!r} ({spec.type_name}) of node {nid!r} "
                        f"({node.type_name}) is not connected; expected an edge into "
                        f"{nid}.{pname}{hint}",
                    )
                )

    g = nx.DiGraph()
    for j, e in enumerate(edges):
        if not e.feedback:
            g.add_edge(e.src, e.dst, index=j)
    for comp in nx.strongly_connected_components(g):
        if len(comp) == 1 and not any(g.has_edge(n, n) for n in comp):
            continue
        cycle = nx.find_cycle(g.subgraph(comp))
        names = " -> ".join([cycle[0][0], *[c[1] for c in cycle]])
        closing = g.edges[cycle[-1][0], cycle[-1][1]]["index"]
        fi = edge_index[closing]
        issues.append(
            GraphIssue(
                layer.mark(("edges", fi)),
                f"edges[{fi}]",
                f"undeclared cycle {names}; expected 'feedback: true' on one of its edges "
                "if the loop is intended",
            )
        )

    issues.sort(key=lambda x: (x.mark.file != source, x.mark.file, x.mark.line, x.mark.column))
    if issues:
        return None, issues
    canonical = json.dumps(data, sort_keys=True, default=str)
    graph = Graph(
        name=str(data.get("graph") or Path(source).stem),
        description=str(data.get("description", "")),
        version=str(data.get("version", "1")),
        nodes=resolved,
        edges=edges,
        source=source,
        variant_hash=hashlib.sha256(canonical.encode()).hexdigest()[:12],
        files=layer.files,
        data=data,
    )
    return graph, []


def check_graph(
    path: str | Path,
    registry: NodeRegistry | None = None,
    *,
    text: str | None = None,
) -> tuple[Graph | None, list[GraphIssue]]:
    """Load and check a graph file. Returns the graph, or ``None`` and every issue found."""
    p = Path(path)
    issues: list[GraphIssue] = []
    if text is None and not p.is_file():
        return None, [GraphIssue(Mark(str(p), 1, 1), "", "file not found; expected a graph file (.yaml)")]
    layer = _load_layers(p.resolve() if text is None else p, [p.resolve()], issues, text=text)
    if layer is not None:
        # Issues are reported against the path the user typed, not its resolved form.
        layer.file = str(p)
    if layer is None:
        return None, [_relabel(i, p) for i in issues]
    graph, more = _check(layer, registry or default_registry(), str(p.resolve()) if text is None else str(p))
    all_issues = [_relabel(i, p) for i in [*issues, *more]]
    return (graph if not all_issues else None), all_issues


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
