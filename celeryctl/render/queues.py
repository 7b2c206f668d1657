"""``celeryctl queues`` and ``purge`` for people: the queue table (``status`` shows it too)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeryctl import render

if TYPE_CHECKING:
    from rich.table import Table

    from celeryctl.broker import QueueDepth, QueueReport
    from celeryctl.queues import Purged


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _members(q: QueueDepth) -> str:
    """A quorum queue's members online of all (``3/3``); ``-`` for other types."""
    if q.members is None:
        return "-"
    return f"{len(q.online or [])}/{len(q.members)}"


def queue_table(queues: list[QueueDepth], title: str | None = None, *, dead: bool = False) -> Table:
    """queue, ready, unacked (``-`` when unknown), consumers; with ``dead`` the messages in each
    queue's dead-letter queue (``-``: it has none).  Listed through the management API, also the
    type, publish and deliver rates, and a quorum queue's members online."""
    from rich.table import Table

    api = any(q.type is not None for q in queues)

    table = Table(title=title, title_justify="left", title_style="bold", box=None, pad_edge=False)
    table.add_column("queue")
    table.add_column("ready", justify="right")
    table.add_column("unacked", justify="right")
    table.add_column("consumers", justify="right")
    if dead:
        table.add_column("dead", justify="right")
    if api:
        for col in ("type", "in/s", "out/s", "members"):
            table.add_column(col, justify="left" if col == "type" else "right")
    for q in queues:
        row = [
            render.escape(q.name),
            str(q.ready),
            "-" if q.unacked is None else str(q.unacked),
            str(q.consumers) if q.consumers is not None else "-",
        ]
        if dead:
            row.append("-" if q.dead is None else f"[bold red]{q.dead}[/]" if q.dead else "0")
        if api:
            row.extend([q.type or "-", _rate(q.publish_rate), _rate(q.deliver_rate), _members(q)])
        table.add_row(*row)
    return table


def report_title(report: QueueReport) -> str:
    return f"queues (vhost {report.vhost}, via {report.source})"


def warn_missing(report: QueueReport) -> None:
    for name in report.missing:
        render.warn(f"queue '{name}' does not exist")


def print_queues(report: QueueReport) -> None:
    if report.queues:
        render.out.print(queue_table(report.queues, title=report_title(report)))
    else:
        render.out.print(f"no queues on vhost {render.escape(report.vhost)}")
    warn_missing(report)


def print_purged(purged: Purged) -> None:
    render.out.print(f"removed {purged.removed} message(s) from queue '{render.escape(purged.queue)}'")
