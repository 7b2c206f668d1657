"""celeryctl doctor: one table of checks, from the settings to the workers."""

from __future__ import annotations

from typing import Annotated

import typer

from celeryctl import render
from celeryctl.cli import options
from celeryctl.cli.options import (
    ApiOpt,
    AppOpt,
    BackendOpt,
    BrokerOpt,
    DataDirOpt,
    JsonOpt,
    MaxDeliveriesOpt,
    QueueTypeOpt,
    VerboseOpt,
    seconds_parser,
)


def doctor(
    broker: BrokerOpt = None,
    backend: BackendOpt = None,
    app_: AppOpt = None,
    data_dir: DataDirOpt = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            parser=seconds_parser(minimum=0.1),
            metavar="SECONDS",
            help="Seconds to wait for TCP, the AMQP handshake and the login, at least 0.1 "
            "(env CELERYCTL_DOCTOR_TIMEOUT; default 2.0).",
            show_default=False,
        ),
    ] = None,
    ping_timeout: Annotated[
        float | None,
        typer.Option(
            "--ping-timeout",
            parser=seconds_parser(minimum=0.05),
            metavar="SECONDS",
            help="Seconds to wait for workers to answer the ping, at least 0.05 "
            "(env CELERYCTL_PING_TIMEOUT; default 1.0).",
            show_default=False,
        ),
    ] = None,
    queue_type: QueueTypeOpt = None,
    max_deliveries: MaxDeliveriesOpt = None,
    strict: Annotated[bool, typer.Option("--strict", help="Count warnings as failures (exit 1).")] = False,
    verbose: VerboseOpt = False,
    json_: JsonOpt = False,
    api: ApiOpt = None,
) -> None:
    """Check broker, credentials, permissions, app, result backend and workers; say what to fix.

    Checks in order: settings, TCP (every node of a ";" failover list: some down warns, all
    down fails), AMQP handshake, authentication, virtual host, permissions, guest login (off
    loopback), management API, resource alarms (per node), cluster members (celeryctl's local
    cluster through rabbitmqctl, else the management API: members down, partitions), quorum
    queues (of the URL's vhost: leader and members online, fail below a majority; members whose
    stop would lose a quorum; classic queues on a cluster), Celery app, serializer (pickle),
    result backend, workers, queue depths, queue types (as --queue-type declares them), dead
    letters, versions, compatibility (RabbitMQ 4.x: mirroring policies, transient queues and
    global QoS refused by 4.3, naming the versions and the setting), local node.
    Each is ok, warn, fail or skip (could not run because an earlier one failed).
    Exit 0 when nothing failed, 1 when something did (with --strict, a warning too).
    """
    from celeryctl.doctor import run_doctor
    from celeryctl.render.doctor import print_report

    flags = {
        "broker_url": broker,
        "result_backend": backend,
        "app": app_,
        "data_dir": data_dir,
        "doctor_timeout": timeout,
        "ping_timeout": ping_timeout,
        "queue_type": queue_type,
        "max_deliveries": max_deliveries,
        "management_url": api,
    }
    with render.spinner("checking", quiet=json_ or not render.err.is_terminal) as update:
        report = run_doctor(flags, config=options.config_path(), on_progress=update)
    if json_:
        render.emit_json(report.to_dict(strict))
    else:
        print_report(report, verbose, strict)
    # celery and kombu leave many objects; freezing them spares the collection at interpreter
    # exit (~0.1 s of a ~1 s command).
    import gc

    gc.freeze()
    if report.failed(strict):
        raise typer.Exit(1)
