"""celeryctl demo: the whole tutorial in one command."""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Annotated

import typer

from celeryctl import render
from celeryctl.cli.options import BrokerOpt, DataDirOpt, JsonOpt, resolve
from celeryctl.errors import ExitCode


def demo(
    seconds: Annotated[
        int, typer.Option("--seconds", help="How long longtime_add runs (it reports progress each second).")
    ] = 5,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", "-p", help="AMQP port when the private node has to be started (default 5672).", show_default=False
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", "-t", help="Seconds to wait for the result.")] = 60.0,
    broker: BrokerOpt = None,
    data_dir: DataDirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Run the tutorial end to end: broker, worker, longtime_add 1 2 with a live display, result.

    Starts celeryctl's private RabbitMQ node (or reuses it, or uses --broker /
    CELERYCTL_BROKER_URL), starts a worker for the built-in demo app in the background, submits
    longtime_add(1, 2), shows its progress, prints the result and stops the worker.  The broker
    keeps running (celeryctl broker stop stops it).
    """
    from celeryctl import submit as core
    from celeryctl.cli.submit import _live_state
    from celeryctl.worker import demo_session

    settings = resolve(broker_url=broker, data_dir=data_dir)
    name = "celeryctl.demo.longtime_add"
    with ExitStack() as stack:
        with render.spinner("preparing the demo", quiet=json_) as update:
            session = stack.enter_context(demo_session(settings, port=port, on_progress=update))
        if not json_:
            render.info(f"broker {session.broker}; worker {session.worker.node} (log {session.worker.log_file})")
        core.prepare_client(session.app)
        result = core.send(session.app, name, [1, 2], {"seconds": seconds}, queue=session.queue)
        try:
            with _live_state(name, str(result.id), quiet=json_) as on_event:
                outcome = core.wait(session.app, result, name=name, timeout=timeout, on_event=on_event)
        except KeyboardInterrupt:
            render.err.print(f"stopped waiting for task {result.id}; stopping the worker")
            raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    if not outcome.ok:
        raise core.failure_error(outcome)
    if json_:
        render.emit_json(render.ok_doc(broker=session.broker, node_started=session.node_started, **outcome.to_dict()))
        return
    render.out.print(json.dumps(outcome.result), markup=False)
    render.info("done: the worker has stopped; the broker keeps running (celeryctl broker stop stops it)")
