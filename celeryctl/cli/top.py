"""celeryctl top: a live dashboard fed by Celery events (one snapshot when not on a terminal)."""

from __future__ import annotations

from typing import Annotated

import typer

from celeryctl import render
from celeryctl.cli.options import (
    ApiOpt,
    AppOpt,
    BackendOpt,
    BrokerOpt,
    DataDirOpt,
    JsonOpt,
    QueueNamesOpt,
    resolve,
    seconds_parser,
)


def top(
    duration: Annotated[
        float,
        typer.Option(
            "--duration",
            "-d",
            parser=seconds_parser(),
            metavar="SECONDS",
            help="When not on a terminal: seconds to collect events before the snapshot.",
        ),
    ] = 2.0,
    refresh: Annotated[
        float,
        typer.Option(
            "--refresh",
            parser=seconds_parser(minimum=0.2),
            metavar="SECONDS",
            help="Seconds between queue-depth polls (at least 0.2).",
        ),
    ] = 2.0,
    json_: JsonOpt = False,
    queue: QueueNamesOpt = None,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    backend: BackendOpt = None,
    data_dir: DataDirOpt = None,
    api: ApiOpt = None,
) -> None:
    """A live dashboard fed by Celery events: workers, tasks/s, running tasks, queues, failures.

    Press q to quit.  When stdout is not a terminal (or with --json) it collects events for
    --duration seconds and prints one snapshot.  Workers that stop sending heartbeats show as
    offline; a lost broker connection is shown and retried.  Queue depths come through the
    management API when one is set (--api) or celeryctl's node runs it.
    """
    from celeryctl.celeryapp import load_app
    from celeryctl.top import TopSession

    settings = resolve(broker_url=broker, result_backend=backend, app=app_spec, data_dir=data_dir, management_url=api)
    app = load_app(settings.app, settings)
    session = TopSession(app, settings, refresh=refresh, queues=queue or ())
    if json_ or not render.out.is_terminal:
        view = session.collect(duration)
        if json_:
            render.emit_json(render.ok_doc(**view.to_dict()))
        else:
            from celeryctl.render.top import print_snapshot

            print_snapshot(view)
        return
    from celeryctl.render.top import run_live

    session.start()
    try:
        run_live(session.state.view, render.out)
    finally:
        session.stop(wait=0.5)
