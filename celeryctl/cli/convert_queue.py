"""celeryctl convert-queue: give an existing queue celeryctl's type and arguments, keeping its messages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from celeryctl import render
from celeryctl.cli.options import (
    AppOpt,
    BrokerOpt,
    DataDirOpt,
    JsonOpt,
    MaxDeliveriesOpt,
    parse_queue_name,
    resolve,
)

if TYPE_CHECKING:
    from celeryctl.convert import Conversion, Progress


def _queue_type(value: str) -> str:
    from celeryctl.errors import UsageError
    from celeryctl.topology import check_queue_type

    try:
        return check_queue_type(value, "")
    except UsageError as exc:
        raise typer.BadParameter(f"{exc.message.strip()} ({exc.hint})") from None


def convert_queue(
    queue: Annotated[
        str,
        typer.Argument(parser=parse_queue_name, metavar="QUEUE", help="The queue to convert.", show_default=False),
    ],
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            parser=_queue_type,
            metavar="TYPE",
            help="quorum or classic (default: the queue_type setting, env CELERYCTL_QUEUE_TYPE; quorum).",
            show_default=False,
        ),
    ] = None,
    max_deliveries: MaxDeliveriesOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be done; change nothing.")] = False,
    json_: JsonOpt = False,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Convert QUEUE to a quorum or classic queue with celeryctl's arguments, keeping every message.

    RabbitMQ cannot change the type of a queue that exists, so its messages are moved to a holding
    queue (QUEUE.converting), QUEUE is declared again (quorum: with its delivery limit and its
    dead-letter queue QUEUE.dead) and the messages are moved back; every move is confirmed by the
    broker before the original is removed.  Nothing may consume QUEUE meanwhile: stop its workers
    first (exit 1 otherwise).  An interrupted run is continued by running the same command again.
    """
    from celeryctl import convert as core
    from celeryctl import topology
    from celeryctl.celeryapp import resolve_broker

    settings = resolve(
        broker_url=broker, app=app_spec, data_dir=data_dir, queue_type=to, max_deliveries=max_deliveries
    )
    url = resolve_broker(settings)
    with _progress(queue, quiet=json_ or dry_run) as on_progress:
        result = core.convert(url, queue, topology.policy(settings), dry_run=dry_run, on_progress=on_progress)
    if json_:
        render.emit_json(render.ok_doc(**result.to_dict()))
    else:
        _show(result)


@contextmanager
def _progress(queue: str, *, quiet: bool) -> Iterator[Progress]:
    """Bars on stderr (one per move) when it is a terminal; else one line per move when it ends."""
    from celeryctl.convert import holding_queue

    labels = {"out": f"{queue} -> {holding_queue(queue)}", "back": f"{holding_queue(queue)} -> {queue}"}
    if quiet or not render.err.is_terminal:
        yield lambda _phase, _done, _total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=render.err
    ) as bars:
        rows: dict[str, object] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in rows:
                rows[phase] = bars.add_task(render.escape(labels.get(phase, phase)), total=total)
            bars.update(rows[phase], completed=done, total=total)  # type: ignore[arg-type]

        yield update


def _show(result: Conversion) -> None:
    from_type = result.from_type or "deleted"
    what = result.to_type + (f" (max_deliveries {result.max_deliveries})" if result.max_deliveries else "")
    if result.resumed:
        render.info(
            f"resuming an interrupted conversion: {result.resumed_messages} message(s) were in '{result.holding}'"
        )
    if result.dry_run:
        if not result.steps:
            render.out.print(f"queue '{result.queue}' is already {what}: nothing to do", markup=False)
            return
        render.out.print(f"would convert queue '{result.queue}' ({from_type}) to {what}:", markup=False)
        for step in result.steps:
            render.out.print(f"  {step}", markup=False)
        return
    if not result.changed:
        render.out.print(f"queue '{result.queue}' is already {what}: nothing to do", markup=False)
        return
    render.out.print(
        f"converted queue '{result.queue}' from {from_type} to {what}: {result.moved} message(s) moved "
        f"in {result.seconds:.2f} s, confirmed by the broker",
        markup=False,
    )
