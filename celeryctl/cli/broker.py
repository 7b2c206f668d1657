"""celeryctl broker install | start | stop | status: the private RabbitMQ node."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from celeryctl import render
from celeryctl.broker import mask_url
from celeryctl.cli.options import DataDirOpt, JsonOpt, port_parser, resolve, seconds_parser
from celeryctl.errors import UnreachableError
from celeryctl.rabbitmq.node import MAX_PORT, MIN_PORT
from celeryctl.render import broker as view

if TYPE_CHECKING:
    from celeryctl.rabbitmq.node import Node

app = typer.Typer(
    help="Install RabbitMQ and run celeryctl's private node (no root needed).",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain click help: typer.rich_utils alone costs ~50 ms of start-up
)


def _node(data_dir: object) -> Node:
    return resolve(data_dir=data_dir).local_node()


@app.command()
def install(json_: JsonOpt = False) -> None:
    """Install rabbitmq-server with apt-get, or say which version is already there.

    Needs root; otherwise prints the exact sudo command and exits 5.
    """
    from celeryctl.rabbitmq import install as installer

    with render.spinner("checking for RabbitMQ", quiet=json_) as update:
        result = installer.install(on_progress=update)
    if json_:
        render.emit_json(render.ok_doc(**result.to_dict()))
    else:
        view.show_installation(result)


@app.command()
def start(
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            "-p",
            metavar="PORT",
            parser=port_parser(low=MIN_PORT, high=MAX_PORT),
            help=f"AMQP port on 127.0.0.1, {MIN_PORT}-{MAX_PORT} (default 5672, or the port used last time); "
            "distribution uses PORT+20000 when that is free and below 32768, else a free port",
            show_default=False,
        ),
    ] = None,
    management: Annotated[
        bool, typer.Option("--management", help="Enable the management plugin (HTTP API and UI).")
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            parser=seconds_parser(allow_zero=False),
            help="Seconds to wait for the node to answer.",
        ),
    ] = 90.0,
    data_dir: DataDirOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Start celeryctl's private RabbitMQ node and wait until it accepts AMQP connections.

    The node listens on 127.0.0.1 only, with its own data directory, Erlang cookie and epmd.
    It prints the AMQP URL (password masked) on stdout.  Already running: says so and exits 0;
    running on another port than --port, or without --management when asked: exit 9.
    """
    node = _node(data_dir)
    with render.spinner("starting RabbitMQ", quiet=json_) as update:
        info, started = node.start(port, management=management, timeout=timeout, on_progress=update)
    if json_:
        render.emit_json(
            render.ok_doc(
                started=started,
                url=mask_url(info.url),
                name=info.name,
                pid=info.pid,
                port=info.port,
                management_url=info.management_url,
                data_dir=str(node.dir),
            )
        )
    else:
        view.show_started(info, started)


@app.command()
def stop(data_dir: DataDirOpt = None, json_: JsonOpt = False) -> None:
    """Stop celeryctl's private node; no process of it is left behind."""
    node = _node(data_dir)
    with render.spinner("stopping RabbitMQ", quiet=json_) as update:
        was_running = node.stop(on_progress=update)
    if json_:
        render.emit_json(render.ok_doc(stopped=was_running, was_running=was_running))
    else:
        render.out.print("stopped" if was_running else "not running")


@app.command()
def status(data_dir: DataDirOpt = None, json_: JsonOpt = False) -> None:
    """Show whether the private node runs: pid, ports, RabbitMQ version, data dir.

    Exits 0 when it runs, 6 when it does not (with --json: ok false, the status in error.details).
    """
    node = _node(data_dir)
    st = node.status()
    doc = st.to_dict()
    if doc["url"]:
        doc["url"] = mask_url(doc["url"])
    if not st.running:
        last = f" (it last ran on port {doc['port']})" if doc["port"] else " (it has never been started)"
        raise UnreachableError(
            f"celeryctl's node in {node.dir} is not running{last}",
            "start it with: celeryctl broker start",
            details=doc,
        )
    if json_:
        render.emit_json(render.ok_doc(**doc))
    else:
        view.show_status(doc)
