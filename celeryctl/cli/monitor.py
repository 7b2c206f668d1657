"""celeryctl status | top | queues | purge | flower: see workers and queues, and act on them."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from celeryctl import render
from celeryctl.cli.options import AppOpt, BackendOpt, BrokerOpt, DataDirOpt, JsonOpt, resolve
from celeryctl.errors import NotConfirmedError

if TYPE_CHECKING:
    from celeryctl.monitor import QueueStatus, Status
    from celeryctl.settings import Settings

TimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", "-t", help="Seconds to wait for workers to answer.", min=0.1),
]
QueueNamesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--queue",
        "-Q",
        help="Also look up this queue (repeat it); needed for queues other than the app's on a remote broker.",
        show_default=False,
    ),
]
AllOpt = Annotated[
    bool, typer.Option("--all", help="Include Celery's internal queues (remote control, events, replies).")
]


def _settings(app_spec: str | None, broker: str | None, backend: str | None, data_dir: object) -> Settings:
    return resolve(broker_url=broker, result_backend=backend, app=app_spec, data_dir=data_dir)


def _queue_table(queues: list[QueueStatus], title: str | None = None) -> object:
    from rich.table import Table

    table = Table(title=title, title_justify="left", title_style="bold", box=None, pad_edge=False)
    table.add_column("queue")
    table.add_column("ready", justify="right")
    table.add_column("unacked", justify="right")
    table.add_column("consumers", justify="right")
    for q in queues:
        table.add_row(
            render.escape(q.name),
            str(q.ready),
            "-" if q.unacked is None else str(q.unacked),
            str(q.consumers) if q.consumers is not None else "-",
        )
    return table


def _print_status(st: Status) -> None:
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
    out.print(_queue_table(st.queues.queues, title=f"queues (vhost {st.queues.vhost}, via {st.queues.source})"))
    t = st.totals
    unacked = "?" if t["unacked"] is None else t["unacked"]
    out.print(
        f"[bold]total[/] {t['workers']} worker(s), concurrency {t['concurrency'] if t['concurrency'] is not None else '?'}, "
        f"{t['processed']} processed, {t['active']} active; "
        f"{t['ready']} ready, {unacked} unacked"
    )
    for name in st.queues.missing:
        render.warn(f"queue '{name}' does not exist")


def status(
    json_: JsonOpt = False,
    timeout: TimeoutOpt = 0.5,
    queue: QueueNamesOpt = None,
    all_: AllOpt = False,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    backend: BackendOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """One snapshot of workers (pool, concurrency, processed, active, uptime) and queues.

    Workers get --timeout seconds to answer.  Queue depths: ready and unacknowledged apart on
    celeryctl's own node (through rabbitmqctl), ready only on another broker (through AMQP).
    """
    from celeryctl import monitor
    from celeryctl.celeryapp import load_app

    settings = _settings(app_spec, broker, backend, data_dir)
    app = load_app(settings.app, settings)
    st = monitor.status(app, settings, timeout=timeout, queues=queue or (), include_internal=all_)
    if json_:
        render.emit_json(render.ok_doc(**st.to_dict()))
    else:
        _print_status(st)


def queues(
    json_: JsonOpt = False,
    queue: QueueNamesOpt = None,
    all_: AllOpt = False,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """List queues with their messages ready, unacknowledged and consumers.

    On celeryctl's own node every queue of the vhost is listed; on another broker the app's
    queues and those named with --queue.
    """
    from celeryctl import monitor

    settings = _settings(app_spec, broker, None, data_dir)
    report = monitor.queues_report(settings, queue or (), include_internal=all_)
    if json_:
        render.emit_json(render.ok_doc(**report.to_dict()))
        return
    if report.queues:
        render.out.print(_queue_table(report.queues, title=f"queues (vhost {report.vhost}, via {report.source})"))
    else:
        render.out.print(f"no queues on vhost {report.vhost}")
    for name in report.missing:
        render.warn(f"queue '{name}' does not exist")


def purge(
    queue: Annotated[str, typer.Argument(help="The queue to empty.", show_default=False)],
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (required when not on a terminal).")
    ] = False,
    json_: JsonOpt = False,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Remove every message waiting in QUEUE and say how many were removed.

    Asks first on a terminal; elsewhere it refuses (exit 11) unless --yes.  Messages already
    delivered to a worker and not yet acknowledged stay.
    """
    from celeryctl import monitor
    from celeryctl.settings import mask_url

    settings = _settings(app_spec, broker, None, data_dir)
    url = monitor.resolve_broker(settings)
    if not yes:
        if not sys.stdin.isatty():
            raise NotConfirmedError(
                f"not purging queue '{queue}' without confirmation",
                "pass --yes to purge when not on a terminal",
            )
        depth = monitor.queue_depth(url, queue)
        if not typer.confirm(
            f"Remove the {depth.ready} ready message(s) from queue '{queue}' on {mask_url(url)}?", err=True
        ):
            raise NotConfirmedError(f"queue '{queue}' was not purged", "answer y, or pass --yes")
    removed = monitor.purge(url, queue)
    if json_:
        render.emit_json(render.ok_doc(queue=queue, removed=removed, vhost=monitor.vhost_of(url)))
    else:
        render.out.print(f"removed {removed} message(s) from queue '{render.escape(queue)}'")


def top(
    duration: Annotated[
        float,
        typer.Option("--duration", "-d", help="When not on a terminal: seconds to collect events before the snapshot."),
    ] = 2.0,
    refresh: Annotated[float, typer.Option("--refresh", help="Seconds between queue-depth polls.", min=0.2)] = 2.0,
    json_: JsonOpt = False,
    queue: QueueNamesOpt = None,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    backend: BackendOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """A live dashboard fed by Celery events: workers, tasks/s, running tasks, queues, failures.

    Press q to quit.  When stdout is not a terminal (or with --json) it collects events for
    --duration seconds and prints one snapshot.  Workers that stop sending heartbeats show as
    offline; a lost broker connection is shown and retried.
    """
    from celeryctl import monitor
    from celeryctl.celeryapp import load_app

    settings = _settings(app_spec, broker, backend, data_dir)
    app = load_app(settings.app, settings)
    session = monitor.TopSession(app, settings, refresh=refresh, queues=queue or ())
    if json_ or not render.out.is_terminal:
        view = session.collect(duration)
        if json_:
            render.emit_json(render.ok_doc(**view.to_dict()))
        else:
            from celeryctl.render.top import frame

            render.out.print(frame(view, render.out.width))
        return
    from celeryctl.render.top import run_live

    session.start()
    try:
        run_live(session.state.view, render.out)
    finally:
        session.stop(wait=0.5)


def flower(
    port: Annotated[int, typer.Option("--port", "-p", help="HTTP port for Flower.")] = 5555,
    address: Annotated[
        str, typer.Option("--address", help="Address to listen on; other than loopback needs --basic-auth.")
    ] = "127.0.0.1",
    basic_auth: Annotated[
        str | None,
        typer.Option(
            "--basic-auth",
            envvar="CELERYCTL_FLOWER_BASIC_AUTH",
            help="USER:PASSWORD for HTTP basic auth, or USER to be asked for the password "
            "(env CELERYCTL_FLOWER_BASIC_AUTH; prefer the variable: a flag is visible in the process list).",
            show_default=False,
        ),
    ] = None,
    unsafe_no_auth: Annotated[
        bool, typer.Option("--unsafe-no-auth", help="Allow a non-loopback address without authentication.")
    ] = False,
    url_prefix: Annotated[
        str | None, typer.Option("--url-prefix", help="Serve under this path (behind a proxy).", show_default=False)
    ] = None,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    backend: BackendOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run Flower (the web monitor) for the resolved broker and app, in this process.

    Needs the flower extra: pip install 'celeryctl[flower]'.  Listens on 127.0.0.1 unless
    --address; another address without --basic-auth is refused unless --unsafe-no-auth.  On
    celeryctl's node started with --management, Flower also gets the broker's HTTP API.
    Passwords reach Flower through its environment, never through an argv.
    """
    from celeryctl import monitor
    from celeryctl.celeryapp import load_app
    from celeryctl.settings import mask_url

    settings = _settings(app_spec, broker, backend, data_dir)
    monitor.require_flower()
    if basic_auth and ":" not in basic_auth and sys.stdin.isatty():
        password = typer.prompt(
            f"Flower password for {basic_auth}", hide_input=True, confirmation_prompt=True, err=True
        )
        basic_auth = f"{basic_auth}:{password}"
    app = load_app(settings.app, settings)
    plan = monitor.flower_plan(
        settings,
        monitor.app_broker(app),
        port=port,
        address=address,
        basic_auth=basic_auth,
        unsafe_no_auth=unsafe_no_auth,
        url_prefix=url_prefix,
    )
    render.info(
        f"Flower on {plan.url} ({'basic auth' if plan.auth else 'no auth'}) for broker "
        f"{mask_url(monitor.app_broker(app))}"
        + (f", broker API {plan.broker_api}" if plan.broker_api else "")
        + "; Ctrl-C stops it"
    )
    code = monitor.run_flower(app, plan)
    if code:
        raise typer.Exit(code)
