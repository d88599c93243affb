"""YAML with positions: every value keeps the file, line and column it came from.

PyYAML's composer already knows where each node starts; we keep those marks keyed by the value's
path (``("nodes", "vad", "params", "threshold")``) so that any later check, pydantic's included,
can point the user at the exact spot. Duplicate mapping keys, which PyYAML silently resolves to
the last one, are reported instead.
"""

from __future__ import annotations

import re
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
        return closest_mark(self.marks, self.key_marks, self.file, path, key=key)


def closest_mark(
    marks: dict[PathKey, Mark], key_marks: dict[PathKey, Mark], file: str, path: PathKey, *, key: bool = False
) -> Mark:
    """The closest known position for ``path``: its value (its key first, with ``key``), else its key,
    else the nearest ancestor's, else the start of ``file``."""
    p = tuple(path)
    while True:
        if key and p in key_marks:
            return key_marks[p]
        if p in marks:
            return marks[p]
        if p in key_marks:
            return key_marks[p]
        if not p:
            return Mark(file, 1, 1)
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
        return None, [_syntax_issue(text, file, exc)]
    except yaml.YAMLError as exc:
        return None, [GraphIssue(Mark(file, 1, 1), "", f"YAML error: {exc}; expected a valid YAML document")]
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


def _syntax_issue(text: str, file: str, exc: yaml.MarkedYAMLError) -> GraphIssue:
    """A syntax error at the spot PyYAML stopped, with the YAML path it was in."""
    mark = _mark(file, exc.problem_mark or exc.context_mark)
    problem = exc.problem or "invalid YAML"
    ctx = ""
    if exc.context:
        cm = exc.context_mark
        if cm is not None and exc.problem_mark is not None and cm.line != exc.problem_mark.line:
            ctx = f" ({exc.context} that starts at line {cm.line + 1}, column {cm.column + 1})"
        else:
            ctx = f" ({exc.context})"
    if "'\\t'" in problem:
        hint = "; expected spaces for indentation (YAML does not allow tabs)"
    elif re.search(r"\bexpected\b", problem):
        hint = ""
    else:
        hint = "; expected valid YAML: check the indentation, quotes and brackets here"
    stop = exc.problem_mark.index if exc.problem_mark is not None else len(text)
    path = format_path(_path_at_error(text, stop))
    return GraphIssue(mark, path, f"YAML syntax error: {problem}{ctx}{hint}")


def _path_at_error(text: str, stop: int) -> PathKey:
    """The YAML path the scanner was in when it failed (best effort; ``()`` when unknown).

    Works on tokens, not parser events: the scanner has usually read the key in front of an error
    even when the parser has not yet seen it. Tokens from ``stop`` (the error's offset) on are
    ignored: the scanner reads ahead of the parser.
    """
    # Each open collection: [kind, key or index, state]; kind is "map", "seq" or "bare" (a block
    # sequence written at its key's indentation, which has no start or end token).
    stack: list[list[Any]] = []
    loader = yaml.SafeLoader(text)
    tokens: list[yaml.Token] = []
    try:
        while loader.check_token():
            tokens.append(loader.get_token())  # type: ignore[no-untyped-call]
    except yaml.YAMLError:
        tokens.extend(loader.tokens)
    finally:
        loader.dispose()
    for tok in tokens:
        if tok.start_mark.index >= stop:
            break
        top = stack[-1] if stack else None
        if isinstance(tok, (yaml.BlockMappingStartToken, yaml.FlowMappingStartToken)):
            stack.append(["map", None, "key"])
        elif isinstance(tok, yaml.BlockSequenceStartToken):
            stack.append(["seq", -1, ""])
        elif isinstance(tok, yaml.FlowSequenceStartToken):
            stack.append(["seq", 0, ""])
        elif isinstance(tok, yaml.BlockEntryToken):
            if top is not None and top[0] == "map":
                stack.append(["bare", 0, ""])
            elif top is not None:
                top[1] += 1
        elif isinstance(tok, yaml.FlowEntryToken):
            if top is not None and top[0] == "seq":
                top[1] += 1
            elif top is not None:
                top[2] = "key"
        elif isinstance(tok, yaml.KeyToken):
            while top is not None and top[0] == "bare":
                stack.pop()
                top = stack[-1] if stack else None
            if top is not None:
                top[1], top[2] = None, "key"
        elif isinstance(tok, yaml.ValueToken):
            if top is not None and top[0] == "map":
                top[2] = "value"
        elif isinstance(tok, yaml.ScalarToken):
            if top is not None and top[0] == "map" and top[2] == "key" and top[1] is None:
                top[1] = tok.value
        elif isinstance(tok, (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)):
            while stack and stack[-1][0] == "bare":
                stack.pop()
            if stack:
                stack.pop()
            if stack and stack[-1][0] == "map":
                stack[-1][2] = "done"  # its value is complete: an error now is between entries
    path: list[str | int] = []
    for kind, key, state in stack:
        if key is None or (kind != "map" and key < 0) or state == "done":
            break
        path.append(key)
    return tuple(path)


def read_yaml(path: Path) -> tuple[YamlDoc | None, list[GraphIssue]]:
    return parse_yaml(path.read_text(encoding="utf-8"), str(path))
