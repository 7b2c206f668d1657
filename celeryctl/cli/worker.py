"""celeryctl worker: run a Celery worker with durable defaults and a banner."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from celeryctl.cli.options import (
    AppOpt,
    BackendOpt,
    BrokerOpt,
    DataDirOpt,
    MaxDeliveriesOpt,
    QueuesOpt,
    QueueTypeOpt,
    count_parser,
    port_parser,
    resolve,
    seconds_parser,
)
from celeryctl.render.worker import banner
from celeryctl.worker_steps import DEFAULT_GRACE


def worker(
    extra: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="CELERY_ARGS...",
            help="Options for Celery's own worker, after --, e.g. -- --max-tasks-per-child 100",
            show_default=False,
        ),
    ] = None,
    app_spec: AppOpt = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            parser=count_parser(low=1),
            metavar="N",
            help="Worker processes (default: the number of CPUs).",
            show_default=False,
        ),
    ] = None,
    queues: QueuesOpt = None,
    loglevel: Annotated[
        str, typer.Option("--loglevel", "-l", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
    ] = "INFO",
    pool: Annotated[
        str | None,
        typer.Option("--pool", "-P", metavar="POOL", help="prefork (default), solo, threads, eventlet or gevent.", show_default=False),
    ] = None,
    hostname: Annotated[
        str | None,
        typer.Option("--hostname", "-n", metavar="NAME", help="Node name, e.g. w1@%h (default celery@HOST).", show_default=False),
    ] = None,
    beat: Annotated[bool, typer.Option("--beat", "-B", help="Also run the beat scheduler in this worker.")] = False,
    wait_for_broker: Annotated[
        float,
        typer.Option(
            "--wait-for-broker",
            parser=seconds_parser(),
            metavar="SECONDS",
            help="Keep trying to reach the broker for this many seconds before giving up."
        ),
    ] = 0.0,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            parser=seconds_parser(),
            metavar="SECONDS",
            help="After SIGTERM, running tasks get this long to finish; then they are re-queued "
            "(keep it below the container's kill timeout: Kubernetes 30 s, docker stop 10 s).",
        ),
    ] = DEFAULT_GRACE,
    health_file: Annotated[
        Path | None,
        typer.Option(
            "--health-file",
            metavar="PATH",
            help="Where the worker writes its health record every second (default: "
            "DATA_DIR/health/NODE.json); celeryctl probe worker reads it.",
            show_default=False,
        ),
    ] = None,
    health_port: Annotated[
        int | None,
        typer.Option(
            "--health-port",
            parser=port_parser(),
            metavar="PORT",
            help="Also serve GET /livez and /readyz on 127.0.0.1:PORT (200 or 503, JSON).",
            show_default=False,
        ),
    ] = None,
    durable: Annotated[
        bool,
        typer.Option(
            "--durable-defaults/--celery-defaults",
            help="Late acks, re-queue on a lost worker, prefetch 1, events on and sent in 0.1 s batches "
            "(only where the app keeps Celery's defaults).",
        ),
    ] = True,
    queue_type: QueueTypeOpt = None,
    max_deliveries: MaxDeliveriesOpt = None,
    broker: BrokerOpt = None,
    backend: BackendOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Run a Celery worker in this process for the demo app or your app (-A).

    Tasks are acknowledged after they ran and re-queued if a worker process dies; each process
    takes one task at a time; task events are on.  SIGTERM: no new tasks, the running ones get
    --grace seconds to finish, what is left is re-queued, exit 0.  Ctrl-C: warm shutdown, twice:
    cold.  A message that cannot be decoded is rejected (dead-lettered on a quorum queue).  A
    broker that cannot be reached is an error within seconds (exit 6).  The worker keeps a health
    record (state, connection, queues, tasks, a heartbeat every second) for celeryctl probe worker.
    """
    from celeryctl import topology
    from celeryctl import worker as core
    from celeryctl.celeryapp import load_app

    settings = resolve(
        broker_url=broker,
        result_backend=backend,
        app=app_spec,
        data_dir=data_dir,
        queue_type=queue_type,
        max_deliveries=max_deliveries,
    )
    app = load_app(settings.app, settings)
    plan = core.prepare(
        app,
        concurrency=concurrency,
        queues=queues,
        loglevel=loglevel,
        pool=pool,
        hostname=hostname,
        beat=beat,
        extra=extra,
        wait_for_broker=wait_for_broker,
        durable=durable,
        queue_policy=topology.policy(settings),
        grace=grace,
        data_dir=settings.data_dir,
        health_file=health_file,
        health_port=health_port,
    )
    banner(plan)
    code = core.run(app, plan)
    if code:
        raise typer.Exit(code)
