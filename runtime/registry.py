"""Node types by name, from the ``ah.nodes`` entry-point group.

Built-in nodes register the same way third-party packages do (see ``pyproject.toml``), so there is
one mechanism and ``ah nodes`` lists both. Programs and tests may also register classes directly.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ah.runtime.node import Node

GROUP = "ah.nodes"


@dataclass(slots=True)
class NodeTypeInfo:
    name: str
    cls: type[Node[Any]]
    origin: str  # "module:Class (distribution)"


class NodeLoadError(RuntimeError):
    pass


class NodeRegistry:
    def __init__(self) -> None:
        self._eps: dict[str, EntryPoint] = {}
        self._loaded: dict[str, NodeTypeInfo] = {}

    @classmethod
    def from_entry_points(cls) -> NodeRegistry:
        reg = cls()
        for ep in entry_points(group=GROUP):
            reg._eps.setdefault(ep.name, ep)
        return reg

    def register(self, name: str, node_cls: type[Node[Any]]) -> None:
        self._loaded[name] = NodeTypeInfo(name, node_cls, f"{node_cls.__module__}:{node_cls.__qualname__}")

    def names(self) -> list[str]:
        return sorted(set(self._eps) | set(self._loaded))

    def __contains__(self, name: object) -> bool:
        return name in self._eps or name in self._loaded

    def get(self, name: str) -> NodeTypeInfo:
        info = self._loaded.get(name)
        if info is not None:
            return info
        ep = self._eps.get(name)
        if ep is None:
            raise KeyError(name)
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not take the CLI down
            raise NodeLoadError(f"node type {name!r} ({ep.value}) failed to import: {exc}") from exc
        if not (isinstance(obj, type) and issubclass(obj, Node)):
            raise NodeLoadError(f"entry point {name!r} ({ep.value}) is not a Node subclass")
        dist = ep.dist.name if ep.dist is not None else "?"
        info = NodeTypeInfo(name, obj, f"{ep.value} ({dist})")
        self._loaded[name] = info
        return info

    def __iter__(self) -> Iterator[NodeTypeInfo]:
        for name in self.names():
            yield self.get(name)

    def closest(self, name: str) -> str | None:
        return closest(name, self.names())


def closest(name: str, candidates: list[str] | set[str] | tuple[str, ...]) -> str | None:
    """The most similar candidate, for "did you mean" hints."""
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return found[0] if found else None


_default: NodeRegistry | None = None


def default_registry() -> NodeRegistry:
    global _default
    if _default is None:
        _default = NodeRegistry.from_entry_points()
    return _default
