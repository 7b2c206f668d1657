"""What ``celeryctl broker install | start | stop | status`` show for people (stdout: the data)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeryctl import render
from celeryctl.broker import mask_url

if TYPE_CHECKING:
    from celeryctl.rabbitmq.install import Installation
    from celeryctl.rabbitmq.node import NodeInfo


def show_installation(result: Installation) -> None:
    if result.installed_now:
        render.out.print(f"installed RabbitMQ {result.version or ''} ({result.bin_dir})")
    else:
        render.out.print(f"RabbitMQ {result.version or '(unknown version)'} is already installed ({result.bin_dir})")


def show_started(info: NodeInfo, started: bool) -> None:
    """What runs on stderr; the AMQP URL alone on stdout."""
    if started:
        render.info(f"RabbitMQ {info.version or ''} node {info.name} is running (pid {info.pid})")
    else:
        render.info(f"already running: node {info.name} (pid {info.pid})")
    if info.management_url:
        render.info(f"management UI: {info.management_url} (guest/guest, loopback only)")
    render.out.print(mask_url(info.url), markup=False)


def show_status(doc: dict[str, Any]) -> None:
    """A running node's status document (its URL already masked) as a two-column table."""
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("state", "[green]running[/]")
    for key in ("name", "pid", "url", "port", "dist_port", "epmd_port", "management_port", "version", "data_dir"):
        if doc.get(key) is not None:
            table.add_row(key.replace("_", " "), render.escape(str(doc[key])))
    render.out.print(table)
