"""celeryctl probe: exec probes for systemd, Docker and Kubernetes (exit 0 or not)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from celeryctl.cli.options import (
    BrokerOpt,
    DataDirOpt,
    JsonOpt,
    PlainHelpCommand,
    parse_worker_name,
    resolve,
    seconds_parser,
)
from celeryctl.health import DEFAULT_MAX_AGE

app = typer.Typer(
    help="Health probes for orchestrators: is a worker alive and ready, does the broker let us in.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("worker", cls=PlainHelpCommand)
def worker(
    name: Annotated[
        str | None,
        typer.Argument(
            parser=parse_worker_name,
            metavar="NAME",
            help="The worker's node name (w1@host, or w1 for w1@this host); default: the only worker "
            "with a record in DATA_DIR/health.",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", metavar="PATH", help="The record to read (the worker's --health-file).", show_default=False),
    ] = None,
    max_age: Annotated[
        float,
        typer.Option(
            "--max-age",
            parser=seconds_parser(allow_zero=False),
            metavar="SECONDS",
            help="A heartbeat older than this fails (the worker writes one every second).",
        ),
    ] = DEFAULT_MAX_AGE,
    ready: Annotated[bool, typer.Option("--ready", help="Also require: connected to the broker and consuming.")] = False,
    beat: Annotated[
        bool, typer.Option("--beat", help="Also require: ready, and the beat scheduler (worker --beat) runs its schedule.")
    ] = False,
    json_: JsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Is the worker alive (its event loop wrote a heartbeat within --max-age, its process runs)?

    Reads the health record celeryctl worker writes every second: no broker round trip, no Celery
    import, a few tens of milliseconds.  A worker busy with long tasks is alive and ready.  Exit 0
    yes, 1 no, with one line saying why.  For a liveness probe use it bare; for readiness --ready.
    """
    from celeryctl import health
    from celeryctl.render.probe import show_verdict

    where = None if file is not None else resolve(data_dir=data_dir).data_dir
    verdict = health.probe(file=file, data_dir=where, name=name, max_age=max_age, ready=ready, beat=beat)
    code = show_verdict(verdict, json_)
    if code:
        raise typer.Exit(code)


@app.command("broker")
def broker(
    broker: BrokerOpt = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", "-t", parser=seconds_parser(minimum=0.1), metavar="SECONDS", help="Seconds per connection step."
        ),
    ] = 2.0,
    json_: JsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Does the broker answer and let the configured user in (TCP, AMQP handshake, login)?

    Exit 0 yes, 6 unreachable, 7 login or vhost refused.  A URL list is up when one host is.
    """
    import time

    from celeryctl.broker import ensure_reachable
    from celeryctl.render.probe import show_broker

    settings = resolve(broker_url=broker, data_dir=data_dir)
    started = time.monotonic()
    answered = ensure_reachable(settings.broker, timeout=timeout)
    show_broker({"broker": answered.masked, "ms": round((time.monotonic() - started) * 1000, 1)}, json_)
