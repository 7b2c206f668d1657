"""celeryctl submit: enqueue a task (confirmed by the broker) and optionally wait with a live display."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from celeryctl import render
from celeryctl.cli.options import (
    AppOpt,
    BackendOpt,
    BrokerOpt,
    DataDirOpt,
    JsonOpt,
    MaxDeliveriesOpt,
    QueueTypeOpt,
    VerboseOpt,
    count_parser,
    parse_queue_name,
    resolve,
    seconds_parser,
)
from celeryctl.errors import ExitCode, InterruptedError_, UsageError
from celeryctl.render.submit import bar, live_state


def submit(
    task: Annotated[
        str,
        typer.Argument(
            metavar="TASK", help="Task name: short (add) or full (test_celery.tasks.longtime_add).", show_default=False
        ),
    ],
    args: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="ARGS...",
            help='Positional arguments; each is read as JSON when it parses (1, true, "x"), else as a string.',
            show_default=False,
        ),
    ] = None,
    kw: Annotated[
        list[str] | None,
        typer.Option(
            "--kw",
            "-k",
            metavar="KEY=VALUE",
            help="Keyword argument KEY=VALUE (VALUE read as JSON when it parses); repeatable.",
            show_default=False,
        ),
    ] = None,
    kwargs_json: Annotated[
        str | None,
        typer.Option(
            "--kwargs",
            metavar="JSON",
            help='Keyword arguments as one JSON object, e.g. {"seconds": 2}.',
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait for the result, with a live display on stderr.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            "-t",
            parser=seconds_parser(allow_zero=False),
            metavar="SECONDS",
            help="With --wait: give up waiting after this many seconds (exit 8).",
            show_default=False,
        ),
    ] = None,
    countdown: Annotated[
        float | None,
        typer.Option(
            "--countdown",
            parser=seconds_parser(),
            metavar="SECONDS",
            help="Run no earlier than this many seconds from now.",
            show_default=False,
        ),
    ] = None,
    eta: Annotated[
        str | None,
        typer.Option(
            "--eta", metavar="ISO8601", help="Run no earlier than this ISO 8601 time (UTC when no zone is given).", show_default=False
        ),
    ] = None,
    queue: Annotated[
        str | None,
        typer.Option(
            "--queue",
            "-Q",
            parser=parse_queue_name,
            metavar="QUEUE",
            help="Queue to send to (default: the app's routing).",
            show_default=False,
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            "--priority", parser=count_parser(low=0, high=9), metavar="N", help="Message priority 0-9 (classic queues: quorum queues on RabbitMQ 3.x have no priorities).", show_default=False
        ),
    ] = None,
    count: Annotated[
        int,
        typer.Option(
            "--count",
            "-n",
            parser=count_parser(low=1),
            metavar="N",
            help="Submit this many copies (progress bars for publishing and, with --wait, completion)."
        ),
    ] = 1,
    ids_file: Annotated[
        Path | None,
        typer.Option(
            "--ids-file",
            metavar="PATH",
            help="Append the id of every task the broker confirmed to PATH (one a line, mode 0600), as the "
            "confirms arrive: after a failure, PATH holds what was submitted.",
            show_default=False,
            dir_okay=False,
        ),
    ] = None,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    backend: BackendOpt = None,
    queue_type: QueueTypeOpt = None,
    max_deliveries: MaxDeliveriesOpt = None,
    data_dir: DataDirOpt = None,
    json_: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Submit a task; print its id once the broker confirmed it, or with --wait its result.

    With --wait the task's state (PENDING, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE), a
    progress bar (when the task reports current/total) and the elapsed time show on stderr;
    the result is printed on stdout as JSON.  A failed task exits 1, --timeout exits 8,
    Ctrl-C stops waiting (exit 130) and leaves the task running.  A broker lost midway exits 6
    saying how many tasks the broker confirmed; --ids-file keeps their ids.
    """
    from celeryctl import submit as core

    # Argument errors first: they must not pay for importing Celery.
    if countdown is not None and eta is not None:
        raise UsageError("--countdown and --eta cannot be used together", "pick one")
    core.check_priority(priority)
    task_args = core.parse_args(args)
    task_kwargs = core.parse_kwargs(kw, kwargs_json)
    eta_time = core.parse_eta(eta) if eta is not None else None

    settings = resolve(
        broker_url=broker,
        result_backend=backend,
        app=app_spec,
        data_dir=data_dir,
        queue_type=queue_type,
        max_deliveries=max_deliveries,
    )
    app, name = core.open_client(
        settings, task, wait=wait, args=task_args, kwargs=task_kwargs, queue=queue, priority=priority
    )
    options: dict[str, Any] = {
        "countdown": countdown,
        "eta": eta_time,
        "queue": queue,
        "priority": priority,
        "ids_file": ids_file,
    }
    if countdown is not None or eta_time is not None:
        from celeryctl import delayed

        note = delayed.prepare(app, name, queue)
        if note is not None:
            render.warn(note)

    if count > 1:
        _submit_many(app, name, task_args, task_kwargs, count, options, wait=wait, timeout=timeout, json_=json_)
        return

    result = core.send(app, name, task_args, task_kwargs, **options)
    task_id = str(result.id)
    if not wait:
        if json_:
            render.emit_json(render.ok_doc(task_id=task_id, task=name, state="SENT"))
        else:
            render.out.print(task_id)
        return
    try:
        qname, count_consumers = core.consumers(app, name, queue)
        if count_consumers == 0:
            render.warn(
                f"no worker consumes queue '{qname}' yet: the task waits there until one starts "
                f"(celeryctl worker -Q {qname}); Ctrl-C stops waiting and leaves it queued"
            )
        with live_state(name, task_id, quiet=json_) as on_event:
            outcome = core.wait(app, result, name=name, timeout=timeout, on_event=on_event)
    except KeyboardInterrupt:  # landed outside core.wait (counting consumers, the display): the same outcome
        raise core.stopped_waiting(task_id, name) from None
    if not outcome.ok:
        raise core.failure_error(outcome, verbose=verbose)
    if json_:
        render.emit_json(render.ok_doc(**outcome.to_dict()))
    else:
        render.out.print(json.dumps(outcome.result, default=str), markup=False)


def _submit_many(
    app: Any,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    count: int,
    options: dict[str, Any],
    *,
    wait: bool,
    timeout: float | None,
    json_: bool,
) -> None:
    from celeryctl import bulk, bulk_wait

    with bar(f"publishing {count} x {name}", count, quiet=json_) as advance:
        batch = bulk.send_many(app, name, args, kwargs, count, on_published=lambda n: advance(n, ""), **options)
    if not json_:
        render.info(
            f"submitted {batch.submitted} tasks in {batch.publish_seconds:.2f} s "
            f"({batch.submitted / max(batch.publish_seconds, 1e-9):,.0f}/s, confirmed by the broker)"
        )
    if not wait:
        if json_:
            render.emit_json(render.ok_doc(**batch.to_dict(waited=False, with_ids=True)))
        else:
            render.out.print("\n".join(batch.ids), markup=False)
        return
    try:
        with bar("running", count, quiet=json_) as advance:

            def on_progress(done: int, failed: int) -> None:
                advance(done + failed, f"failed {failed}" if failed else "")

            bulk_wait.wait_many(app, batch, timeout=timeout, on_progress=on_progress)
    except KeyboardInterrupt:  # landed outside wait_many, which reports its own progress
        raise InterruptedError_(
            f"stopped waiting; {batch.submitted} tasks were submitted and keep running",
            None,
            details={"submitted": batch.submitted, "ids": batch.ids},
        ) from None
    doc = batch.to_dict(waited=True)
    if json_:
        render.emit_json({**render.ok_doc(**doc), "ok": not batch.failed})
    else:
        render.out.print(
            f"succeeded {batch.succeeded}, failed {batch.failed} of {batch.submitted} "
            f"in {batch.seconds:.2f} s ({doc['rate']:,}/s)"
        )
    if batch.failed:
        raise typer.Exit(int(ExitCode.FAILED))
