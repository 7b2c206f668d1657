"""What ``submit`` and ``demo`` show on stderr: a task's live state, and progress bars for many tasks.

Animations run only when stderr is a terminal; otherwise a task's state changes are printed one
line each, and the bars print nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celeryctl import render

if TYPE_CHECKING:
    from celeryctl.submit import Event


@contextmanager
def bar(label: str, total: int, *, quiet: bool) -> Iterator[Callable[[int, str], None]]:
    """A progress bar (done/total, rate) on stderr when it is a terminal; else nothing."""
    if quiet or not render.err.is_terminal:
        yield lambda _n, _note: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("[red]{task.fields[note]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=render.err, transient=False) as progress:
        row = progress.add_task(label, total=total, rate="", note="")

        def advance(n: int, note: str) -> None:
            elapsed = progress.tasks[0].elapsed or 0.0
            rate = f"{n / elapsed:,.0f}/s" if elapsed > 0 else ""
            progress.update(row, completed=n, rate=rate, note=note)

        yield advance


def retry_reason(meta: Any) -> str:
    """``FlakyError: planned failure 1 of 2`` from a RETRY state's exception meta."""
    if not isinstance(meta, dict):
        return str(meta)
    message = meta.get("exc_message", "")
    if isinstance(message, (list, tuple)):
        message = ", ".join(str(m) for m in message)
    return f"{meta.get('exc_type', 'error')}: {message}"


STATE_STYLE = {
    "PENDING": "dim",
    "STARTED": "cyan",
    "PROGRESS": "cyan",
    "RETRY": "yellow",
    "SUCCESS": "green",
    "FAILURE": "red",
    "REVOKED": "red",
}


@contextmanager
def live_state(name: str, task_id: str, *, quiet: bool) -> Iterator[Callable[[Event], None]]:
    """Show a task's state: a live line with a bar when stderr is a terminal, else one line per change."""
    if quiet:
        yield lambda _e: None
        return
    if not render.err.is_terminal:
        last: list[str] = []

        def plain(event: Event) -> None:
            if event.tick:
                return
            line = f"{event.state}"
            if event.current is not None and event.total:
                line += f" {event.current:g}/{event.total:g}"
            if event.state == "RETRY":
                line += f" ({retry_reason(event.meta)})"
            if not last or last[-1] != line:
                last.append(line)
                render.err.print(f"{name}[{task_id}] {line} ({event.elapsed:.1f} s)", markup=False)

        yield plain
        return

    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("{task.description}"),
        TextColumn("{task.fields[state]}"),
        BarColumn(),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
        console=render.err,
        transient=False,
    )
    retries = [0]
    with progress:
        row = progress.add_task(escape(f"{name}[{task_id[:8]}]"), total=None, state="PENDING", step="")

        def live(event: Event) -> None:
            style = STATE_STYLE.get(event.state, "")
            if event.state == "RETRY" and not event.tick:
                retries[0] += 1
            state = f"[{style}]{escape(event.state)}[/]" if style else escape(event.state)
            if retries[0]:
                state += (
                    f" [yellow](retry {retries[0]}: {escape(retry_reason(event.meta))})[/]"
                    if event.state == "RETRY"
                    else f" [yellow](retries {retries[0]})[/]"
                )
            fields: dict[str, Any] = {"state": state}
            if event.current is not None and event.total:
                fields.update(total=event.total, completed=event.current, step=f"{event.current:g}/{event.total:g}")
            elif event.state == "SUCCESS":
                task = progress.tasks[0]
                fields.update(total=task.total or 1, completed=task.total or 1)
            progress.update(row, **fields)

        yield live
