"""A graph as text and as a picture: users would rather look than read YAML."""

from __future__ import annotations

from pathlib import Path

from ah.runtime.graph_loader import Graph


def graph_text(graph: Graph) -> str:
    lines = [f"graph {graph.name} (version {graph.version}, variant {graph.variant_hash})"]
    if graph.description:
        lines.append(f"  {graph.description}")
    lines.append("nodes:")
    width = max((len(n) for n in graph.nodes), default=0)
    type_width = max((len(n.type_name) for n in graph.nodes.values()), default=0)
    for node in graph.nodes.values():
        ins = ", ".join(f"{p.name}:{p.type_name}" for p in node.cls.inputs.values()) or "-"
        outs = ", ".join(f"{p.name}:{p.type_name}" for p in node.cls.outputs.values()) or "-"
        lines.append(f"  {node.id:<{width}}  {node.type_name:<{type_width}}  in[{ins}] out[{outs}]")
    lines.append("edges:")
    for e in graph.edges:
        opts = f"{e.policy.value}, capacity {e.capacity}" + (", feedback" if e.feedback else "")
        lines.append(f"  {e}  ({opts})")
    return "\n".join(lines)


def draw_graph(graph: Graph, target: Path) -> None:
    """Lay nodes out left to right by topological depth and draw them with matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx
    from matplotlib.patches import FancyBboxPatch

    g = graph.to_networkx()
    dag = nx.DiGraph((u, v) for u, v, d in g.edges(data=True) if not d["feedback"])
    dag.add_nodes_from(g.nodes)
    layer: dict[str, int] = {}
    for depth, generation in enumerate(nx.topological_generations(dag)):
        for n in sorted(generation):
            layer[n] = depth
    columns: dict[int, list[str]] = {}
    for n, d in layer.items():
        columns.setdefault(d, []).append(n)
    pos: dict[str, tuple[float, float]] = {}
    for d, members in columns.items():
        for i, n in enumerate(members):
            pos[n] = (d * 4.0, -(i - (len(members) - 1) / 2) * 1.6)
    ncols = max(columns) + 1 if columns else 1
    nrows = max((len(m) for m in columns.values()), default=1)
    fig, ax = plt.subplots(figsize=(max(6.0, ncols * 3.4), max(3.0, nrows * 1.5 + 1.2)))
    ax.set_axis_off()
    box_w, box_h = 2.2, 0.9
    for n, (x, y) in pos.items():
        node = graph.nodes[n]
        ax.add_patch(
            FancyBboxPatch(
                (x - box_w / 2, y - box_h / 2),
                box_w,
                box_h,
                boxstyle="round,pad=0.05,rounding_size=0.15",
                fc="#eef3fb",
                ec="#35618f",
                lw=1.4,
            )
        )
        ax.text(x, y + 0.14, n, ha="center", va="center", fontsize=11, weight="bold", color="#1b2b40")
        ax.text(x, y - 0.2, node.type_name, ha="center", va="center", fontsize=8.5, color="#4a5a70")
    for e in graph.edges:
        (x1, y1), (x2, y2) = pos[e.src], pos[e.dst]
        style = "arc3,rad=0.35" if e.feedback or x2 <= x1 else "arc3,rad=0.0"
        color = "#b5472f" if e.feedback else ("#a07a10" if e.policy.value == "drop_oldest" else "#35618f")
        ax.annotate(
            "",
            xy=(x2 - box_w / 2, y2),
            xytext=(x1 + box_w / 2, y1),
            arrowprops={
                "arrowstyle": "-|>",
                "color": color,
                "lw": 1.3,
                "connectionstyle": style,
                "shrinkA": 2,
                "shrinkB": 2,
            },
        )
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        ax.text(
            mx, my + 0.12, f"{e.src_port} → {e.dst_port}", ha="center", va="bottom", fontsize=7.5, color=color
        )
        notes = [e.policy.value] if e.policy.value != "block" else []
        notes += ["feedback"] if e.feedback else []
        if notes:
            ax.text(mx, my - 0.12, f"[{', '.join(notes)}]", ha="center", va="top", fontsize=7, color=color)
    xs = [p[0] for p in pos.values()] or [0.0]
    ys = [p[1] for p in pos.values()] or [0.0]
    ax.set_xlim(min(xs) - box_w, max(xs) + box_w)
    ax.set_ylim(min(ys) - 1.4, max(ys) + 1.3)
    title = f"{graph.name}" + (f" — {graph.description}" if graph.description else "")
    ax.set_title(title, fontsize=11, loc="left")
    target.parent.mkdir(parents=True, exist_ok=True)
    svg = target.suffix.lower() == ".svg"
    # No date and fixed ids in the SVG, so drawing the same graph twice writes the same file.
    with matplotlib.rc_context({"svg.hashsalt": "ah"}):
        fig.savefig(
            target, bbox_inches="tight", dpi=None if svg else 130, metadata={"Date": None} if svg else None
        )
    plt.close(fig)
