"""celeryctl status: one snapshot of workers and queues."""

from __future__ import annotations

from typing import Annotated

import typer

from celeryctl import render
from celeryctl.cli.options import (
    AllOpt,
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

TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        "-t",
        parser=seconds_parser(minimum=0.1),
        metavar="SECONDS",
        help="Seconds to wait for workers to answer (at least 0.1).",
    ),
]


def status(
    json_: JsonOpt = False,
    timeout: TimeoutOpt = 0.5,
    queue: QueueNamesOpt = None,
    all_: AllOpt = False,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    backend: BackendOpt = None,
    data_dir: DataDirOpt = None,
    api: ApiOpt = None,
) -> None:
    """One snapshot of workers (pool, concurrency, processed, active, uptime) and queues.

    Workers get --timeout seconds to answer.  Queue depths: every queue of the vhost with ready
    and unacknowledged apart through the management API (--api, or celeryctl's node run with
    --management) or rabbitmqctl (celeryctl's own node); else ready only, through AMQP.
    """
    from celeryctl import status as core
    from celeryctl.celeryapp import load_app
    from celeryctl.render.status import print_status

    settings = resolve(broker_url=broker, result_backend=backend, app=app_spec, data_dir=data_dir, management_url=api)
    app = load_app(settings.app, settings)
    st = core.status(app, settings, timeout=timeout, queues=queue or (), include_internal=all_)
    if json_:
        render.emit_json(render.ok_doc(**st.to_dict()))
    else:
        print_status(st)
