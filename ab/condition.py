"""``--fail-if`` conditions: small arithmetic over the comparison's numbers, for CI exit codes.

    B.ttfb_p99 > A.ttfb_p99 * 1.1            B's p99 response latency is 10 % worse than A's
    B.false_cut_off_rate > 0                 any false cut-off in B
    diff.ttfb_mean_low > 0                   B is slower on average, and the 95 % interval says so

Names: ``A.`` / ``B.`` + figure (or its alias: ttfb, barge_in, interruption, cancel_tail, resume,
false_cut_off, premature, paused) + ``_`` + one of mean, p50, p95, p99, max, n, rate; and ``diff.`` +
figure + ``_mean`` / ``_p95`` with optional ``_low`` / ``_high`` (the bootstrap interval of B - A).
Operators: + - * /, comparisons, ``and``, ``or``, ``not``, parentheses. Parsed with :mod:`ast` and
evaluated by walking the tree: no ``eval``, nothing else is allowed. A name whose figure has no data
(no barge-ins in the corpus) makes the condition false, and the report says so.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

from ah.ab.stats import ALIASES, FIGURES, FigureComparison

STATS = ("mean", "p50", "p95", "p99", "max", "n", "rate")
_BIN: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_CMP: dict[type[ast.cmpop], Callable[[float, float], bool]] = {
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


class ConditionError(ValueError):
    """A condition that cannot be parsed, or names something that does not exist."""


class Missing(Exception):
    """A name whose figure has no data in this comparison."""

    def __init__(self, name: str) -> None:
        self.name = name


def _figure(word: str) -> str | None:
    if word in FIGURES:
        return word
    return ALIASES.get(word)


def _split(name: str, suffixes: tuple[str, ...]) -> tuple[str, str]:
    for suffix in sorted(suffixes, key=len, reverse=True):
        if name.endswith("_" + suffix):
            fig = _figure(name[: -len(suffix) - 1])
            if fig is not None:
                return fig, suffix
    known = ", ".join(sorted(ALIASES))
    raise ConditionError(f"unknown name {name!r}: expected <figure>_<{'|'.join(suffixes)}>, figures: {known}")


class Condition:
    def __init__(self, text: str) -> None:
        self.text = text
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise ConditionError(f"--fail-if {text!r}: not an expression ({exc.msg})") from None
        self.tree = tree.body
        self._check(self.tree)

    def _check(self, node: ast.AST) -> None:
        if isinstance(node, ast.Attribute):
            self._resolve_name(node)  # raises on unknown names
            return
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and not isinstance(node.value, bool)
        ):
            return
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            self._check(node.left)
            self._check(node.right)
            return
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
            self._check(node.operand)
            return
        if isinstance(node, ast.BoolOp):
            for v in node.values:
                self._check(v)
            return
        if isinstance(node, ast.Compare) and all(type(op) in _CMP for op in node.ops):
            self._check(node.left)
            for c in node.comparators:
                self._check(c)
            return
        raise ConditionError(f"--fail-if {self.text!r}: {ast.unparse(node)!r} is not allowed here")

    def _resolve_name(self, node: ast.Attribute) -> tuple[str, str, str]:
        if not isinstance(node.value, ast.Name) or node.value.id not in ("A", "B", "diff"):
            raise ConditionError(
                f"--fail-if {self.text!r}: {ast.unparse(node)!r}: names start with A., B. or diff."
            )
        side = node.value.id
        if side == "diff":
            fig, what = _split(node.attr, ("mean", "p95", "mean_low", "mean_high", "p95_low", "p95_high"))
        else:
            fig, what = _split(node.attr, STATS)
        return side, fig, what

    def evaluate(self, comparisons: list[FigureComparison]) -> tuple[bool, str]:
        """(holds, explanation). A condition over a figure without data does not hold."""
        by_name = {c.figure: c for c in comparisons}
        try:
            value = self._eval(self.tree, by_name)
        except Missing as m:
            return False, f"{self.text}: no data for {m.name} (not evaluated)"
        except ZeroDivisionError:
            return False, f"{self.text}: division by zero (not evaluated)"
        return bool(value), f"{self.text}: {'TRUE' if value else 'false'}"

    def _eval(self, node: ast.AST, by: dict[str, FigureComparison]) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Attribute):
            side, fig, what = self._resolve_name(node)
            cmp = by.get(fig)
            name = ast.unparse(node)
            if cmp is None:
                raise Missing(name)
            if side == "diff":
                stat, _, bound = what.partition("_")
                interval = cmp.diff_mean if stat == "mean" else cmp.diff_p95
                if interval is None:
                    raise Missing(name)
                return {"": interval.estimate, "low": interval.low, "high": interval.high}[bound]
            d = cmp.a if side == "A" else cmp.b
            value = d.get(what if what != "rate" else "mean")
            if value is None:
                raise Missing(name)
            return value
        if isinstance(node, ast.BinOp):
            return _BIN[type(node.op)](self._eval(node.left, by), self._eval(node.right, by))
        if isinstance(node, ast.UnaryOp):
            v = self._eval(node.operand, by)
            return (not v) if isinstance(node.op, ast.Not) else -v
        if isinstance(node, ast.BoolOp):
            vals = [self._eval(v, by) for v in node.values]
            return all(vals) if isinstance(node.op, ast.And) else any(vals)
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, by)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = self._eval(right_node, by)
                if not _CMP[type(op)](left, right):
                    return False
                left = right
            return True
        raise ConditionError(f"cannot evaluate {ast.unparse(node)!r}")
