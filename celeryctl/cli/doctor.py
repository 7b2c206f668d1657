"""celeryctl doctor: one table of checks, from the settings to the workers."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from celeryctl import render
from celeryctl.cli import options
from celeryctl.cli.options import AppOpt, BackendOpt, BrokerOpt, DataDirOpt, JsonOpt, VerboseOpt

if TYPE_CHECKING:
    from celeryctl.doctor import DoctorReport

STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def doctor(
    broker: BrokerOpt = None,
    backend: BackendOpt = None,
    app_: AppOpt = None,
    data_dir: DataDirOpt = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            envvar="CELERYCTL_DOCTOR_TIMEOUT",
            help="Seconds to wait for TCP, the AMQP handshake and the login (env CELERYCTL_DOCTOR_TIMEOUT).",
            min=0.1,
        ),
    ] = 2.0,
    ping_timeout: Annotated[
        float,
        typer.Option(
            "--ping-timeout",
            envvar="CELERYCTL_PING_TIMEOUT",
            help="Seconds to wait for workers to answer the ping (env CELERYCTL_PING_TIMEOUT).",
            min=0.05,
        ),
    ] = 1.0,
    strict: Annotated[bool, typer.Option("--strict", help="Count warnings as failures (exit 1).")] = False,
    verbose: VerboseOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Check broker, credentials, permissions, app, result backend and workers; say what to fix.

    Checks in order: settings, TCP, AMQP handshake, authentication, virtual host, permissions,
    resource alarms, Celery app, result backend, workers, queue depths, versions, local node.
    Each is ok, warn, fail or skip (could not run because an earlier one failed).
    Exit 0 when nothing failed, 1 when something did (with --strict, a warning too).
    """
    from celeryctl.doctor import run_doctor

    flags = {"broker_url": broker, "result_backend": backend, "app": app_, "data_dir": data_dir}
    with render.spinner("checking", quiet=json_ or not render.err.is_terminal) as update:
        report = run_doctor(
            flags, config=options.config_path(), timeout=timeout, ping_timeout=ping_timeout, on_progress=update
        )
    if json_:
        render.emit_json(report.to_dict(strict))
    else:
        _print(report, verbose, strict)
    # celery and kombu leave many objects; freezing them spares the collection at interpreter
    # exit (~0.1 s of a ~1 s command).
    import gc

    gc.freeze()
    if report.failed(strict):
        raise typer.Exit(1)


def _print(report: DoctorReport, verbose: bool, strict: bool) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False, show_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("check")
    table.add_column("status")
    table.add_column("time", justify="right", style="dim")
    table.add_column("detail", overflow="fold")
    for number, check in enumerate(report.checks, 1):
        style = STYLE.get(check.status, "")
        lines = [escape(check.detail)]
        if check.hint and check.status != "ok":
            lines.append(f"[yellow]hint:[/] {escape(check.hint)}")
        if verbose:
            lines.extend(f"[dim]{escape(line)}[/]" for line in _details(check.name, check.data))
        table.add_row(
            str(number),
            check.title,
            f"[{style}]{check.status}[/]",
            f"{check.seconds * 1000:.0f} ms",
            "\n".join(lines),
        )
    render.out.print(table)
    counts = report.counts()
    verdict = "FAILED" if report.failed(strict) else "healthy"
    colour = "red" if report.failed(strict) else ("yellow" if counts["warn"] else "green")
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    render.out.print(f"[bold {colour}]{verdict}[/] ({summary}) in {report.seconds:.2f} s")


def _details(name: str, data: dict[str, Any]) -> list[str]:
    """-v lines: where each setting came from, then the check's data."""
    if name == "settings":
        lines = [f"{key} from {source}" for key, source in sorted(data.get("sources", {}).items())]
        for key in ("broker_url", "result_backend", "app", "data_dir", "node", "config_file"):
            if data.get(key) is not None:
                lines.append(f"{key} = {data[key]}")
        if data.get("app_broker_url"):
            lines.append(f"app's own broker_url = {data['app_broker_url']}")
        return lines
    lines = []
    for key, value in data.items():
        if value is None or value == [] or value == {}:
            continue
        if isinstance(value, list) and key == "notes":
            lines.extend(f"note: {v}" for v in value)
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        lines.append(f"{key}: {text}")
    return lines
