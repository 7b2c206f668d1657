"""The ``celeryctl top`` dashboard: one frame from a :class:`~celeryctl.top.TopView`, and the
live loop (Rich ``Live`` in the main thread, ``q`` to quit read from the terminal in cbreak mode).
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from celeryctl import render

if TYPE_CHECKING:
    from celeryctl.top import TopView

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[int], width: int | None = None) -> str:
    """Unicode blocks, one per value, scaled to the largest; zero is the lowest block."""
    if width is not None:
        values = values[-width:]
    top = max(values, default=0)
    if top <= 0:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, round(v / top * (len(SPARKS) - 1)))] for v in values)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _header(view: TopView) -> Text:
    text = Text()
    text.append("celeryctl top", style="bold")
    text.append(f"  {view.broker}  ", style="dim")
    if view.connected:
        text.append("● connected", style="bold green")
        if view.reconnects:
            text.append(f" (reconnected {view.reconnects}x)", style="green")
    else:
        text.append("● broker connection lost", style="bold red")
        if view.disconnected_for is not None:
            text.append(f" {duration(view.disconnected_for)} ago, reconnecting", style="red")
    text.append(f"   events {view.events}   up {duration(view.uptime)}", style="dim")
    if not view.connected and view.broker_error:
        text.append(f"\n{view.broker_error}", style="red")
    return text


def _workers(view: TopView) -> Panel:
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False)
    for col, justify in (
        ("worker", "left"),
        ("state", "left"),
        ("pool", "left"),
        ("conc", "right"),
        ("processed", "right"),
        ("active", "right"),
        ("last seen", "right"),
    ):
        table.add_column(col, justify=justify, no_wrap=col == "worker", ratio=1 if col == "worker" else None)  # type: ignore[arg-type]
    for w in view.workers:
        table.add_row(
            render.literal(w.name),
            Text("online", style="green") if w.online else Text("offline", style="bold red"),
            render.literal(w.pool or "-"),
            str(w.concurrency) if w.concurrency is not None else "-",
            str(w.processed),
            str(w.active),
            f"{duration(w.last_seen)} ago" if w.last_seen is not None else "-",
        )
    online = sum(1 for w in view.workers if w.online)
    title = f"Workers {online}/{len(view.workers)} online"
    body: RenderableType = table if view.workers else Text("no worker answered yet", style="yellow")
    return Panel(body, title=title, title_align="left", border_style="blue")


def _tasks(view: TopView, width: int) -> Panel:
    counts = Text()
    counts.append(f"{view.rate:5.1f} tasks/s  ", style="bold")
    counts.append(f"succeeded {view.succeeded}", style="green")
    counts.append("  ")
    counts.append(f"failed {view.failed}", style="bold red" if view.failed else "red")
    counts.append("  ")
    counts.append(f"retried {view.retried}", style="yellow")
    counts.append(f"  received {view.received}", style="dim")
    spark_width = max(10, min(len(view.history), width - 8))
    line = sparkline(view.history, spark_width)
    before = max(0, len(line) - int(view.uptime) - 1)  # seconds before top started: blank
    spark = Text(" " * before + line[before:], style="cyan")
    spark.append(f"  last {spark_width}s, peak {max(view.history[-spark_width:], default=0)}/s", style="dim")
    return Panel(Group(counts, spark), title="Tasks", title_align="left", border_style="blue")


def _running(view: TopView, limit: int = 10) -> Panel:
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False)
    table.add_column("task", ratio=1)
    table.add_column("id", style="dim", no_wrap=True)
    table.add_column("worker", no_wrap=True)
    table.add_column("runtime", justify="right")
    for task, runtime in view.running[:limit]:
        table.add_row(
            render.literal(task.name), render.literal(task.uuid[:8]), render.literal(task.worker), duration(runtime)
        )
    more = len(view.running) - limit
    title = f"Running {len(view.running)}" + (f" (showing {limit})" if more > 0 else "")
    body: RenderableType = table if view.running else Text("nothing running", style="dim")
    return Panel(body, title=title, title_align="left", border_style="blue")


def _queues(view: TopView) -> Panel:
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False)
    table.add_column("queue", ratio=1)
    table.add_column("ready", justify="right")
    table.add_column("unacked", justify="right")
    table.add_column("consumers", justify="right")
    table.add_column("dead", justify="right")
    for q in view.queues:
        table.add_row(
            render.literal(q.name),
            Text(str(q.ready), style="bold yellow" if q.ready else ""),
            "-" if q.unacked is None else str(q.unacked),
            Text(str(q.consumers), style="bold red" if q.consumers == 0 and q.ready else ""),
            Text("-" if q.dead is None else str(q.dead), style="bold red" if q.dead else ""),
        )
    parts: list[RenderableType] = [table if view.queues else Text("no queues", style="dim")]
    if view.queues_error:
        parts.append(Text(view.queues_error, style="red"))
    return Panel(Group(*parts), title="Queues", title_align="left", border_style="blue")


def _failures(view: TopView, limit: int = 5) -> Panel:
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False)
    table.add_column("when", no_wrap=True)
    table.add_column("task")
    table.add_column("worker", no_wrap=True)
    table.add_column("exception", style="red", overflow="fold", ratio=1)
    for f in view.failures[:limit]:
        when = time.strftime("%H:%M:%S", time.localtime(f.when))
        table.add_row(
            when,
            render.literal(f.name + (" (retry)" if f.retried else "")),
            render.literal(f.worker),
            render.literal(f.exception),
        )
    body: RenderableType = table if view.failures else Text("no failures", style="dim")
    return Panel(body, title="Last failures", title_align="left", border_style="red" if view.failures else "blue")


def frame(view: TopView, width: int = 100, *, footer: str | None = None) -> RenderableType:
    """One dashboard frame."""
    parts: list[RenderableType] = [
        _header(view),
        _workers(view),
        _tasks(view, width),
        _running(view),
        _queues(view),
        _failures(view),
    ]
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)


def print_snapshot(view: TopView) -> None:
    """One frame on stdout, as wide as it is (when stdout is not a terminal)."""
    render.out.print(frame(view, render.out.width))


# --------------------------------------------------------------------------- the live loop


@contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    import termios
    import tty

    old = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


def _read_key(fd: int, timeout: float) -> str | None:
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return None
    data = os.read(fd, 32)
    return data.decode(errors="replace") if data else None


def run_live(view: Callable[[], TopView], console: Console, *, interval: float = 0.5) -> None:
    """Redraw ``view()`` every ``interval`` seconds until ``q`` (or Ctrl-C)."""
    from rich.live import Live

    footer = "q quits" if sys.stdin.isatty() else "Ctrl-C quits"
    fd = sys.stdin.fileno() if sys.stdin.isatty() else None
    guard = _cbreak(fd) if fd is not None else _nothing()
    try:
        with guard, Live(console=console, screen=True, auto_refresh=False, transient=True) as live:
            while True:
                live.update(frame(view(), console.width, footer=footer), refresh=True)
                if fd is not None:
                    key = _read_key(fd, interval)
                    if key and key.lower().startswith("q"):
                        return
                else:
                    time.sleep(interval)
    except KeyboardInterrupt:
        return


@contextmanager
def _nothing() -> Iterator[None]:
    yield
