"""The A/B report: a Markdown summary and a self-contained HTML page with plots.

Plots (matplotlib, embedded as PNG): latency distributions of both variants (empirical CDFs), the
paired differences with their 95 % intervals, interruption outcomes per variant (barge-ins that
stopped the agent; noises and backchannels ignored, paused then resumed, or cut the agent off), and
false cut-offs per scenario category.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ah.ab.stats import FIGURES, FigureComparison, Samples, all_values

COLORS = {"A": "#4C72B0", "B": "#DD8452"}
OUTCOMES = ("stopped the agent", "did not stop it", "ignored", "paused, resumed", "false cut-off")


@dataclass
class Report:
    a_name: str
    b_name: str
    a_file: str
    b_file: str
    corpus: str
    repeats: int
    mode: str
    scenarios: int
    comparisons: list[FigureComparison]
    a: Samples
    b: Samples
    conditions: list[tuple[str, bool, str]] = field(default_factory=list)  # (text, holds, explanation)
    failures: list[str] = field(default_factory=list)  # scenarios that failed to play

    def to_json(self) -> dict[str, Any]:
        return {
            "A": {"graph": self.a_name, "file": self.a_file},
            "B": {"graph": self.b_name, "file": self.b_file},
            "corpus": self.corpus,
            "repeats": self.repeats,
            "mode": self.mode,
            "scenarios": self.scenarios,
            "figures": [c.to_json() for c in self.comparisons],
            "conditions": [{"condition": t, "holds": h, "explanation": e} for t, h, e in self.conditions],
            "failures": self.failures,
            "turns": {"A": _plain(self.a), "B": _plain(self.b)},
        }


def _plain(s: Samples) -> dict[str, list[dict[str, Any]]]:
    return {k: [dict(r) for r in reps] for k, reps in s.items()}


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None:
        return "–"
    if unit == "rate":
        return f"{x * 100:.1f} %"
    return f"{x:.1f}" if abs(x) < 1000 else f"{x:.0f}"


def _interval(c: FigureComparison, which: str) -> str:
    iv = c.diff_mean if which == "mean" else c.diff_p95
    if iv is None:
        return "–"
    if c.unit == "rate":
        return f"{iv.estimate * 100:+.1f} pp [{iv.low * 100:+.1f}, {iv.high * 100:+.1f}]"
    return f"{iv.estimate:+.1f} [{iv.low:+.1f}, {iv.high:+.1f}]"


def rows(report: Report) -> list[list[str]]:
    rows = []
    for c in report.comparisons:
        if c.a.get("n") == 0 and c.b.get("n") == 0:
            continue
        if c.unit == "rate":
            a, b = _fmt(c.a.get("mean"), "rate"), _fmt(c.b.get("mean"), "rate")
        else:
            a = f"{_fmt(c.a.get('mean'))} / {_fmt(c.a.get('p50'))} / {_fmt(c.a.get('p95'))}"
            b = f"{_fmt(c.b.get('mean'))} / {_fmt(c.b.get('p50'))} / {_fmt(c.b.get('p95'))}"
        alias = FIGURES.get(c.figure, (c.figure,))[0]
        rows.append(
            [
                f"{c.figure} ({alias})",
                c.unit,
                a,
                b,
                _interval(c, "mean"),
                _interval(c, "p95") if c.unit != "rate" else "",
                str(c.n_pairs),
                c.verdict,
            ]
        )
    return rows


HEADER = ["figure", "unit", "A mean / p50 / p95", "B mean / p50 / p95", "B−A mean [95 % CI]",
          "B−A p95 [95 % CI]", "pairs", "verdict"]  # fmt: skip


def markdown(report: Report, images: Sequence[str] = ()) -> str:
    lines = [
        f"# A/B: {report.a_name} (A) vs {report.b_name} (B)",
        "",
        f"- A: `{report.a_file}` — B: `{report.b_file}`",
        f"- corpus: `{report.corpus}` ({report.scenarios} conversations), repeats: {report.repeats}, "
        f"mode: {report.mode}",
        "- turns are paired by `scenario#step`; intervals: paired bootstrap (scipy.stats.bootstrap, BCa, "
        "95 %) over the scripted turns; rates are shares of turns.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(report)]
    if report.conditions:
        lines += ["", "## --fail-if", ""]
        lines += [f"- {'**FAILED**' if h else 'ok'}: {e}" for _, h, e in report.conditions]
    if report.failures:
        lines += ["", "## Conversations that failed to play", ""] + [f"- {f}" for f in report.failures]
    if images:
        lines += ["", "## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join(lines) + "\n"


# -- plots --------------------------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def plot_distributions(report: Report) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = [
        c.figure
        for c in report.comparisons
        if c.unit == "ms" and (all_values(report.a, c.figure) or all_values(report.b, c.figure))
    ]
    if not figs:
        return None
    cols = min(3, len(figs))
    rows = -(-len(figs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(figs) :]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, figs, strict=False):
        for side, samples, label in (("A", report.a, report.a_name), ("B", report.b, report.b_name)):
            xs = np.sort(np.asarray(all_values(samples, name), dtype=float))
            if len(xs):
                ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", color=COLORS[side],
                        label=f"{side}: {label} (n={len(xs)})")  # fmt: skip
        ax.set_title(name.replace("_ms", "").replace("_", " "))
        ax.set_xlabel("ms")
        ax.set_ylabel("share of turns ≤ x")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Latency distributions (empirical CDF)")
    fig.tight_layout()
    return _png(fig)


def plot_differences(report: Report) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [c for c in report.comparisons if c.diff_mean is not None and c.unit == "ms"]
    if not cs:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(cs) + 1.4))
    for i, c in enumerate(cs):
        iv = c.diff_mean
        assert iv is not None
        color = "#2a9d8f" if c.verdict == "B better" else "#e63946" if c.verdict == "B worse" else "#666"
        ax.errorbar(iv.estimate, i, xerr=[[iv.estimate - iv.low], [iv.high - iv.estimate]], fmt="o",
                    color=color, capsize=4)  # fmt: skip
        d = np.array([y - x for _, x, y in c.pairs])
        ax.scatter(d, np.full(len(d), i) + 0.25, s=6, color=color, alpha=0.35)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(cs)), [f"{c.figure} (n={c.n_pairs})" for c in cs])
    ax.set_xlabel("B − A per paired turn (ms); bar: mean with 95 % bootstrap interval")
    ax.set_title("Paired differences")
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def _outcome(r: Any) -> str | None:
    role = r.get("role")
    if role == "barge_in":
        return "stopped the agent" if r.get("barge_in_reaction_ms") is not None else "did not stop it"
    if role in ("noise", "backchannel") and r.get("agent_speaking_at_onset"):
        if r.get("false_cut_off"):
            return "false cut-off"
        return "paused, resumed" if r.get("paused") else "ignored"
    return None


def plot_outcomes(report: Report) -> bytes | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = {
        side: Counter(o for reps in s.values() for r in reps if (o := _outcome(r)) is not None)
        for side, s in (("A", report.a), ("B", report.b))
    }
    if not any(counts.values()):
        return None
    cats: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
    for side, s in (("A", report.a), ("B", report.b)):
        for reps in s.values():
            for r in reps:
                if r.get("false_cut_off") is not None:
                    cats[side].setdefault(str(r.get("category", "?")), []).append(
                        float(bool(r["false_cut_off"]))
                    )
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    y = np.arange(len(OUTCOMES))
    for k, side in enumerate(("A", "B")):
        name = report.a_name if side == "A" else report.b_name
        ax1.barh(y + (k - 0.5) * 0.38, [counts[side][o] for o in OUTCOMES], 0.38, color=COLORS[side],
                 label=f"{side}: {name}")  # fmt: skip
    ax1.set_yticks(y, OUTCOMES)
    ax1.invert_yaxis()
    ax1.set_xlabel("turns")
    ax1.set_title("Interruption outcomes (barge-ins; noises and backchannels over the agent)")
    ax1.legend(fontsize=8)
    names = sorted(set(cats["A"]) | set(cats["B"]))
    x = np.arange(len(names))
    for k, side in enumerate(("A", "B")):
        rates = [float(np.mean(cats[side].get(n, [0.0]))) * 100 for n in names]
        ax2.bar(x + (k - 0.5) * 0.38, rates, 0.38, color=COLORS[side], label=side)
    ax2.set_xticks(x, names)
    ax2.set_ylabel("% of noise/backchannel turns")
    ax2.set_title("False cut-offs by scenario category")
    ax2.legend(fontsize=8)
    return _png(fig)


def write(report: Report, out_dir: Path) -> dict[str, Path]:
    """Write report.md, report.html (plots inline), the PNGs and ab.json into ``out_dir``."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, bytes] = {}
    for name, fn in (
        ("latency_distributions", plot_distributions),
        ("paired_differences", plot_differences),
        ("interruption_outcomes", plot_outcomes),
    ):
        data = fn(report)
        if data is not None:
            pngs[name] = data
            (out_dir / f"{name}.png").write_bytes(data)
    md = markdown(report, [f"{n}.png" for n in pngs])
    paths = {"markdown": out_dir / "report.md", "html": out_dir / "report.html", "json": out_dir / "ab.json"}
    paths["markdown"].write_text(md, encoding="utf-8")
    paths["html"].write_text(html_page(report, pngs), encoding="utf-8")
    paths["json"].write_text(json.dumps(report.to_json(), indent=1), encoding="utf-8")
    return paths


def html_page(report: Report, pngs: dict[str, bytes]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in HEADER)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"bad" if cell == "B worse" else "good" if cell == "B better" else ""}">{e(cell)}</td>'
            for cell in row
        )
        + "</tr>"
        for row in rows(report)
    )
    conds = "".join(
        f'<li class="{"bad" if h else "good"}">{"FAILED" if h else "ok"}: {e(x)}</li>'
        for _, h, x in report.conditions
    )
    imgs = "".join(
        f'<figure><img alt="{e(n)}" src="data:image/png;base64,{base64.b64encode(d).decode()}"/>'
        f"<figcaption>{e(n.replace('_', ' '))}</figcaption></figure>"
        for n, d in pngs.items()
    )
    fails = "".join(f"<li>{e(f)}</li>" for f in report.failures)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A/B {e(report.a_name)} vs {e(report.b_name)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}}
table{{border-collapse:collapse;font-size:14px}} td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}} .bad{{color:#c62828;font-weight:600}} .good{{color:#2e7d32}}
figure{{margin:1.5em 0}} img{{max-width:100%}} code{{background:#f4f4f4;padding:1px 4px}}
</style></head><body>
<h1>A/B: {e(report.a_name)} (A) vs {e(report.b_name)} (B)</h1>
<p>A: <code>{e(report.a_file)}</code> — B: <code>{e(report.b_file)}</code><br>
corpus <code>{e(report.corpus)}</code> ({report.scenarios} conversations), repeats {report.repeats},
mode {e(report.mode)}. Turns are paired by <code>scenario#step</code>; intervals are paired bootstrap
(scipy.stats.bootstrap, BCa, 95 %) over the scripted turns.</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{f"<h2>--fail-if</h2><ul>{conds}</ul>" if conds else ""}
{f"<h2>Conversations that failed to play</h2><ul>{fails}</ul>" if fails else ""}
{imgs}
</body></html>
"""
