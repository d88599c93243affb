"""YAML with positions: every value keeps the file, line and column it came from.

PyYAML's composer already knows where each node starts; we keep those marks keyed by the value's
path (``("nodes", "vad", "params", "threshold")``) so that any later check, pydantic's included,
can point the user at the exact spot. Duplicate mapping keys, which PyYAML silently resolves to
the last one, are reported instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PathKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Mark:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def shifted(self, columns: int) -> Mark:
        return Mark(self.file, self.line, self.column + columns)


@dataclass(slots=True)
class GraphIssue:
    """One problem in a graph file, with everything a user needs to fix it."""

    mark: Mark
    path: str
    message: str

    def format(self) -> str:
        return f"{self.mark.file}:{self.mark.line}:{self.mark.column}: {self.path or '(document)'}: {self.message}"


@dataclass(slots=True)
class YamlDoc:
    data: Any
    file: str
    marks: dict[PathKey, Mark] = field(default_factory=dict)  # where each value starts
    key_marks: dict[PathKey, Mark] = field(default_factory=dict)  # where each mapping key starts
    scalar_styles: dict[PathKey, str | None] = field(default_factory=dict)

    def mark(self, path: PathKey, *, key: bool = False) -> Mark:
        """The closest known position for ``path``: the value, else its key, else an ancestor."""
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


def format_path(path: PathKey) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _mark(file: str, m: yaml.Mark | None) -> Mark:
    if m is None:
        return Mark(file, 1, 1)
    return Mark(file, m.line + 1, m.column + 1)


def parse_yaml(text: str, file: str) -> tuple[YamlDoc | None, list[GraphIssue]]:
    """Parse one YAML document. Returns the document, or ``None`` and the syntax error."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = _mark(file, exc.problem_mark or exc.context_mark)
        problem = exc.problem or "invalid YAML"
        ctx = f" ({exc.context})" if exc.context else ""
        return None, [GraphIssue(mark, "", f"YAML syntax error: {problem}{ctx}; expected valid YAML")]
    except yaml.YAMLError as exc:
        return None, [GraphIssue(Mark(file, 1, 1), "", f"YAML error: {exc}; expected valid YAML")]
    finally:
        loader.dispose()
    if root is None:
        return YamlDoc({}, file), []
    doc = YamlDoc(None, file)
    issues: list[GraphIssue] = []
    constructor = yaml.SafeLoader("")  # only its constructors are used, one scalar at a time
    doc.data = _walk(root, (), doc, issues, constructor)
    return doc, issues


def _walk(
    node: yaml.Node, path: PathKey, doc: YamlDoc, issues: list[GraphIssue], ctor: yaml.SafeLoader
) -> Any:
    doc.marks[path] = _mark(doc.file, node.start_mark)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        first_seen: dict[Any, Mark] = {}
        for key_node, value_node in node.value:
            key = ctor.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                key = str(key)
            kpath = (*path, key if isinstance(key, (str, int)) else str(key))
            kmark = _mark(doc.file, key_node.start_mark)
            if key in first_seen:
                first = first_seen[key]
                what = "node id" if path == ("nodes",) else "key"
                issues.append(
                    GraphIssue(
                        kmark,
                        format_path(kpath),
                        f"duplicate {what} {key!r} (first defined at line {first.line}); "
                        f"expected each {what} once",
                    )
                )
                continue
            first_seen[key] = kmark
            doc.key_marks[kpath] = kmark
            out[key] = _walk(value_node, kpath, doc, issues, ctor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, (*path, i), doc, issues, ctor) for i, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    doc.scalar_styles[path] = node.style
    return ctor.construct_object(node, deep=True)


def read_yaml(path: Path) -> tuple[YamlDoc | None, list[GraphIssue]]:
    return parse_yaml(path.read_text(encoding="utf-8"), str(path))
