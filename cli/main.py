"""``ah``: validate, inspect, draw and run graphs.

Exit codes (all commands): 0 success; 1 the graph or input is invalid (messages say where and
why); 2 usage error (bad option or argument); 3 the run failed (a node crashed; the message names it).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ah.runtime.graph_loader import check_graph
from ah.runtime.registry import NodeLoadError, default_registry
from ah.runtime.schema import graph_schema_text

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_RUN_FAILED = 3

app = typer.Typer(
    name="ah",
    help="Automagik Hello: real-time voice-agent graphs.\n\nExit codes: 0 ok, 1 invalid graph or input, "
    "2 usage error, 3 run failed (a node crashed).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
graph_app = typer.Typer(help="Inspect a graph.", no_args_is_help=True)
app.add_typer(graph_app, name="graph")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _load_or_exit(file: Path):  # type: ignore[no-untyped-def]
    graph, issues = check_graph(file)
    if graph is None:
        for issue in issues:
            err.print(issue.format(), markup=False)
        err.print(f"[red]{file}: {len(issues)} error{'s' if len(issues) != 1 else ''}[/red]")
        raise typer.Exit(EXIT_INVALID)
    return graph


@app.command()
def validate(files: Annotated[list[Path], typer.Argument(help="Graph files to check.")]) -> None:
    """Check graph files; print every error of each file (file:line:col: path: message)."""
    bad = 0
    for file in files:
        graph, issues = check_graph(file)
        for issue in issues:
            err.print(issue.format(), markup=False)
        if graph is None:
            bad += 1
            err.print(f"[red]✗ {file}: {len(issues)} error{'s' if len(issues) != 1 else ''}[/red]")
        else:
            out.print(
                f"[green]✓[/green] {file}: graph {graph.name!r}, {len(graph.nodes)} nodes, "
                f"{len(graph.edges)} edges (variant {graph.variant_hash})"
            )
    if bad:
        raise typer.Exit(EXIT_INVALID)


@app.command()
def nodes(
    name: Annotated[str | None, typer.Argument(help="Show only this node type.")] = None,
) -> None:
    """List node types with their ports and params (built-in and plugins)."""
    reg = default_registry()
    names = [name] if name else reg.names()
    if name and name not in reg:
        err.print(f"unknown node type {name!r}; known: {', '.join(reg.names())}", markup=False)
        raise typer.Exit(EXIT_INVALID)
    for n in names:
        try:
            info = reg.get(n)
        except NodeLoadError as exc:
            err.print(f"[red]{exc}[/red]")
            continue
        cls = info.cls
        out.print(f"[bold]{n}[/bold]  {cls.summary}  [dim]{info.origin}[/dim]")
        table = Table(show_header=True, box=None, padding=(0, 2), pad_edge=False)
        table.add_column("  kind")
        table.add_column("name")
        table.add_column("type / default")
        table.add_column("description")
        for p in cls.inputs.values():
            table.add_row("  in", p.name, p.type_name + ("" if p.required else " (optional)"), p.doc)
        for p in cls.outputs.values():
            table.add_row("  out", p.name, p.type_name, p.doc)
        for fname, field in cls.params_model.model_fields.items():
            default = "required" if field.is_required() else repr(field.default)
            ann = getattr(field.annotation, "__name__", str(field.annotation))
            table.add_row("  param", fname, f"{ann} = {default}", field.description or "")
        out.print(table)
        out.print()


@app.command()
def schema(
    write: Annotated[
        Path | None, typer.Option(help="Write the schema to this file instead of stdout.")
    ] = None,
    check: Annotated[
        Path | None, typer.Option(help="Exit 1 if this file differs from the generated schema.")
    ] = None,
) -> None:
    """Print the JSON Schema of graph files (generated from the pydantic models)."""
    text = graph_schema_text()
    if check is not None:
        if not check.is_file() or check.read_text() != text:
            err.print(
                f"{check} is stale; regenerate it with `ah schema --write {check}` (or `make schema`)",
                markup=False,
            )
            raise typer.Exit(EXIT_INVALID)
        out.print(f"{check} is up to date")
        return
    if write is not None:
        write.parent.mkdir(parents=True, exist_ok=True)
        write.write_text(text)
        out.print(f"wrote {write}")
    else:
        sys.stdout.write(text)


@graph_app.command("show")
def graph_show(
    file: Annotated[Path, typer.Argument(help="Graph file.")],
    output: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Picture to write (.svg or .png); default: FILE with .svg"),
    ] = None,
    no_picture: Annotated[bool, typer.Option("--no-picture", help="Print only the text form.")] = False,
) -> None:
    """Print the graph as text and write a picture of it (SVG or PNG)."""
    from ah.cli.draw import draw_graph, graph_text

    graph = _load_or_exit(file)
    out.print(graph_text(graph), markup=False)
    if not no_picture:
        target = output or file.with_suffix(".svg")
        if target.suffix.lower() not in (".svg", ".png"):
            err.print(f"--out must end in .svg or .png, got {target.name!r}", markup=False)
            raise typer.Exit(EXIT_USAGE)
        draw_graph(graph, target)
        out.print(f"picture: {target}")


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="Graph file to run.")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every node's messages.")] = False,
) -> None:
    """Run a graph as one session until it ends (the server mode comes with the protocol nodes)."""
    from ah.runtime.session import Session

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s")
    graph = _load_or_exit(file)
    out.print(
        f"[bold]ah[/bold] running graph [bold]{graph.name}[/bold] ({len(graph.nodes)} nodes, "
        f"variant {graph.variant_hash}) from {file}"
    )
    result = asyncio.run(Session(graph).run())
    for name, stats in result.channels.items():
        lost = stats["dropped_overflow"] + stats["discarded_cancelled"] + stats["discarded_unconsumed"]
        out.print(
            f"  {name:<24} {stats['delivered']:>6} frames delivered, peak depth {stats['peak_depth']}, "
            f"{lost} not delivered"
        )
    if not result.ok:
        err.print(f"[red]session failed: {result.failure}[/red]")
        raise typer.Exit(EXIT_RUN_FAILED)
    out.print(f"[green]session {result.session_id} finished in {result.duration_s:.2f} s[/green]")


def main() -> None:
    app()
