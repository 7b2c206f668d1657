"""celeryctl queues | purge: queue depths, and emptying one queue."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from celeryctl import render
from celeryctl.cli.options import (
    AllOpt,
    ApiOpt,
    AppOpt,
    BrokerOpt,
    DataDirOpt,
    JsonOpt,
    QueueNamesOpt,
    parse_queue_name,
    resolve,
)
from celeryctl.errors import NotConfirmedError


def queues(
    json_: JsonOpt = False,
    queue: QueueNamesOpt = None,
    all_: AllOpt = False,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    data_dir: DataDirOpt = None,
    api: ApiOpt = None,
) -> None:
    """List queues with their messages ready, unacknowledged and consumers.

    Every queue of the vhost is listed through the management API (--api, or celeryctl's node
    run with --management) or on celeryctl's own node through rabbitmqctl; on another broker
    without an API, the app's queues and those named with --queue (ready only).
    """
    from celeryctl.queues import queues_report
    from celeryctl.render.queues import print_queues

    settings = resolve(broker_url=broker, app=app_spec, data_dir=data_dir, management_url=api)
    report = queues_report(settings, queue or (), include_internal=all_)
    if json_:
        render.emit_json(render.ok_doc(**report.to_dict()))
    else:
        print_queues(report)


def purge(
    queue: Annotated[
        str, typer.Argument(parser=parse_queue_name, metavar="QUEUE", help="The queue to empty.", show_default=False)
    ],
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
    from celeryctl import queues as core
    from celeryctl.broker import mask_url, queue_depth
    from celeryctl.celeryapp import resolve_broker
    from celeryctl.render.queues import print_purged

    settings = resolve(broker_url=broker, app=app_spec, data_dir=data_dir)
    url = resolve_broker(settings)
    if not yes:
        if not sys.stdin.isatty():
            raise NotConfirmedError(
                f"not purging queue '{queue}' without confirmation",
                "pass --yes to purge when not on a terminal",
            )
        depth = queue_depth(url, queue)
        if not typer.confirm(
            f"Remove the {depth.ready} ready message(s) from queue '{queue}' on {mask_url(url)}?", err=True
        ):
            raise NotConfirmedError(f"queue '{queue}' was not purged", "answer y, or pass --yes")
    purged = core.purge(url, queue)
    if json_:
        render.emit_json(render.ok_doc(**purged.to_dict()))
    else:
        print_purged(purged)
