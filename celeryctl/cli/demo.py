"""celeryctl demo: the whole tutorial in one command."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Annotated

import typer

from celeryctl import render
from celeryctl.cli.options import BrokerOpt, DataDirOpt, JsonOpt, count_parser, port_parser, resolve, seconds_parser
from celeryctl.errors import UsageError
from celeryctl.render.submit import live_state


def demo(
    seconds: Annotated[
        int,
        typer.Option(
            "--seconds",
            parser=count_parser(low=0, high=3600),
            metavar="N",
            help="How long longtime_add runs, 0-3600 (it reports progress each second).",
        ),
    ] = 5,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            "-p",
            parser=port_parser(low=1024, high=32767),
            metavar="PORT",
            help="AMQP port when the private node has to be started, 1024-32767 (default 5672).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            "-t",
            parser=seconds_parser(allow_zero=False),
            metavar="SECONDS",
            help="Seconds to wait for the result.",
        ),
    ] = 60.0,
    save: Annotated[
        bool,
        typer.Option("--save/--no-save", help="Save the provisioned broker URL to celeryctl.toml (mode 0600)."),
    ] = True,
    broker: BrokerOpt = None,
    data_dir: DataDirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Run the tutorial end to end: broker, worker, longtime_add 1 2 with a live display, result.

    With no broker configured, it starts celeryctl's private RabbitMQ node (or reuses it) and
    provisions it as setup-broker does (user celery, vhost celery, permissions .* on it; the URL
    saved to celeryctl.toml), else it uses --broker / CELERYCTL_BROKER_URL / the settings file.
    Then it starts a worker for the built-in demo app in the background, submits
    longtime_add(1, 2), shows its progress, prints the result and stops the worker.  The broker
    keeps running (celeryctl broker stop stops it).
    """
    if seconds >= timeout:
        raise UsageError(
            f"longtime_add would run {seconds} s, longer than --timeout {timeout:g} s allows",
            f"pass --timeout {seconds + 30} or fewer --seconds",
        )
    from celeryctl import submit as core
    from celeryctl.tutorial import prepare_broker
    from celeryctl.worker import demo_session

    settings = resolve(broker_url=broker, data_dir=data_dir)
    name = "celeryctl.demo.longtime_add"
    prepared = None
    with ExitStack() as stack:
        with render.spinner("preparing the demo", quiet=json_) as update:
            if not settings.broker_url:
                prepared = prepare_broker(settings, port=port, save=save, on_progress=update)
            session = stack.enter_context(demo_session(settings, on_progress=update))
        if prepared is not None and not json_:
            done = "provisioned" if prepared.changed else "already provisioned"
            saved = f"; URL saved to {prepared.saved_to}" if prepared.saved_to else ""
            render.info(f"broker {done}: user {prepared.user}, vhost {prepared.vhost}{saved}")
        if not json_:
            render.info(f"broker {session.broker}; worker {session.worker.node} (log {session.worker.log_file})")
        core.prepare_client(session.app)
        result = core.send(session.app, name, [1, 2], {"seconds": seconds}, queue=session.queue)
        try:
            with live_state(name, str(result.id), quiet=json_) as on_event:
                outcome = core.wait(session.app, result, name=name, timeout=timeout, on_event=on_event)
        except KeyboardInterrupt:  # landed outside core.wait: the same outcome (the worker stops on the way out)
            raise core.stopped_waiting(str(result.id), name) from None
    if not outcome.ok:
        raise core.failure_error(outcome)
    if json_:
        setup = prepared.to_dict() if prepared else None
        node_started = session.node_started or bool(prepared and prepared.node_started)
        render.emit_json(
            render.ok_doc(broker=session.broker, node_started=node_started, setup=setup, **outcome.to_dict())
        )
        return
    render.out.print(json.dumps(outcome.result), markup=False)
    render.info("done: the worker has stopped; the broker keeps running (celeryctl broker stop stops it)")
