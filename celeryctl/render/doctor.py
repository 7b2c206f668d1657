"""The ``celeryctl doctor`` table: one row per check, a hint under what is not ok, and with
``-v`` where each setting came from and each check's data."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from celeryctl import render

if TYPE_CHECKING:
    from celeryctl.doctor import DoctorReport

STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def print_report(report: DoctorReport, verbose: bool, strict: bool) -> None:
    """The table on stdout, then the verdict line."""
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
            lines.extend(f"[dim]{escape(line)}[/]" for line in details(check.name, check.data))
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


def details(name: str, data: dict[str, Any]) -> list[str]:
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
        if isinstance(value, list) and (key, name) in (("nodes", "tcp"), ("queues", "quorum")):
            lines.extend(_row(name, v) for v in value if isinstance(v, dict))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        lines.append(f"{key}: {text}")
    return lines


def _row(name: str, row: dict[str, Any]) -> str:
    """-v: one line per node of a failover list, or per quorum queue."""
    if name == "tcp":
        state = "accepts connections" if row.get("ok") else f"down ({row.get('error') or row.get('kind')})"
        return f"node {row.get('host')}:{row.get('port')}: {state}"
    down = f"; down: {', '.join(row['down'])}" if row.get("down") else ""
    return f"queue {row.get('name')}: {row.get('online')}/{row.get('members')} online, leader {row.get('leader')}{down}"
