"""``celeryctl status`` for people: the broker, a workers table, the queue table and the totals."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeryctl import render
from celeryctl.render.queues import queue_table, report_title, warn_missing

if TYPE_CHECKING:
    from celeryctl.status import Status


def print_status(st: Status) -> None:
    from rich.table import Table

    from celeryctl.render.top import duration

    out = render.out
    out.print(f"[bold]broker[/] {render.escape(st.broker)}")
    if st.workers:
        table = Table(title="workers", title_justify="left", title_style="bold", box=None, pad_edge=False)
        for col in ("worker", "pool", "concurrency", "processed", "active", "uptime"):
            table.add_column(col, justify="left" if col in ("worker", "pool") else "right")
        for w in st.workers:
            table.add_row(
                render.escape(w.name),
                w.pool or "-",
                str(w.concurrency) if w.concurrency is not None else "-",
                str(w.processed),
                str(w.active),
                duration(w.uptime),
            )
        out.print(table)
    else:
        out.print("[yellow]no worker answered[/] (start one with: celeryctl worker)")
    out.print(queue_table(st.queues.queues, title=report_title(st.queues), dead=True))
    t = st.totals
    unacked = "?" if t["unacked"] is None else t["unacked"]
    out.print(
        f"[bold]total[/] {t['workers']} worker(s), concurrency {t['concurrency'] if t['concurrency'] is not None else '?'}, "
        f"{t['processed']} processed, {t['active']} active; "
        f"{t['ready']} ready, {unacked} unacked"
        + (f", [bold red]{t['dead']} dead-lettered[/] (see: celeryctl dead)" if t["dead"] else "")
    )
    warn_missing(st.queues)
