"""What ``celeryctl broker install | start | stop | status`` show for people (stdout: the data)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeryctl import render
from celeryctl.broker import mask_url

if TYPE_CHECKING:
    from celeryctl.rabbitmq.cluster import ClusterStatus
    from celeryctl.rabbitmq.install import Installation
    from celeryctl.rabbitmq.node import NodeInfo


def show_installation(result: Installation) -> None:
    if result.installed_now:
        render.out.print(f"installed RabbitMQ {result.version or ''} ({result.bin_dir})")
    else:
        render.out.print(f"RabbitMQ {result.version or '(unknown version)'} is already installed ({result.bin_dir})")


def show_started(infos: list[NodeInfo], started: bool) -> None:
    """What runs on stderr; the AMQP URL (a cluster: the ``;``-separated list) alone on stdout."""
    for info in infos:
        if started:
            render.info(f"RabbitMQ {info.version or ''} node {info.name} is running (pid {info.pid})")
        else:
            render.info(f"already running: node {info.name} (pid {info.pid})")
        if info.management_url:
            render.info(f"management UI: {info.management_url} (guest/guest, loopback only)")
    if len(infos) > 1:
        render.info(f"a cluster of {len(infos)} nodes; the URL below lists them all (Celery fails over between them)")
    render.out.print(mask_url(";".join(i.url for i in infos)), markup=False)


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


def show_cluster_status(st: ClusterStatus) -> None:
    """A local cluster: one row per member, then partitions and the URL list."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("node", "state", "pid", "port", "dist port", "management", "alarms"):
        table.add_column(column)
    for m in st.members:
        state = "[green]running[/]" if m.running else "[red]down[/]"
        table.add_row(
            render.escape(m.name),
            state,
            str(m.pid or "-"),
            str(m.port),
            str(m.dist_port),
            str(m.management_port or "-"),
            render.escape(", ".join(m.alarms)) if m.alarms else "none",
        )
    render.out.print(table)
    render.out.print(f"partitions: {render.escape('; '.join(st.partitions)) if st.partitions else 'none'}")
    render.out.print(f"version: {st.version or 'unknown'}")
    render.out.print(f"url: {render.escape(mask_url(st.url))}")
