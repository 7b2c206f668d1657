"""celeryctl broker install | start | stop | status: the private RabbitMQ node."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from celeryctl import render
from celeryctl.broker import mask_url
from celeryctl.cli.options import DataDirOpt, JsonOpt, count_parser, port_parser, resolve, seconds_parser
from celeryctl.errors import UnreachableError
from celeryctl.rabbitmq.cluster import MAX_NODES
from celeryctl.rabbitmq.node import MAX_PORT, MIN_PORT
from celeryctl.render import broker as view

if TYPE_CHECKING:
    from celeryctl.rabbitmq.cluster import Cluster

app = typer.Typer(
    help="Install RabbitMQ and run celeryctl's private node (no root needed).",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain click help: typer.rich_utils alone costs ~50 ms of start-up
)


def _cluster(data_dir: object) -> Cluster:
    return resolve(data_dir=data_dir).local_cluster()


@app.command()
def install(json_: JsonOpt = False) -> None:
    """Install rabbitmq-server with apt-get, or say which version is already there.

    apt-get needs root; otherwise it prints the exact sudo command and exits 5.  With dnf
    (Fedora, RHEL family), apk (Alpine) or Homebrew (macOS) it prints the exact command for that
    system and exits 4 (--json: error.details.command); with none of them, what to install.
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
    nodes: Annotated[
        int | None,
        typer.Option(
            "--nodes",
            "-n",
            metavar="N",
            parser=count_parser(low=1, high=MAX_NODES),
            help="Run a local cluster of N nodes (1-7; 3 survives the loss of one): ports PORT, PORT+1, ...; "
            "a running single node becomes the first member.  Default: as last started (1).",
            show_default=False,
        ),
    ] = None,
    management: Annotated[
        bool, typer.Option("--management", help="Enable the management plugin (HTTP API and UI) on every node.")
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
    """Start celeryctl's private RabbitMQ node (or --nodes N: a local cluster) and wait until it accepts AMQP.

    Every node listens on 127.0.0.1 only, with its own data directory; a cluster's members share
    one Erlang cookie and are joined with rabbitmqctl join_cluster.  A stopped cluster starts all
    its members together (they wait for each other).  It prints the AMQP URL (a cluster: every
    member's, ';'-separated, Celery's failover list; password masked) on stdout.  Already running:
    says so and exits 0; running on another port than --port, fewer nodes than a cluster has, or
    without --management when asked: exit 9.
    """
    cluster = _cluster(data_dir)
    with render.spinner("starting RabbitMQ", quiet=json_) as update:
        infos, started = cluster.start(nodes, port, management=management, timeout=timeout, on_progress=update)
    info = infos[0]
    url = ";".join(i.url for i in infos)
    if json_:
        render.emit_json(
            render.ok_doc(
                started=started,
                url=mask_url(url),
                name=info.name,
                pid=info.pid,
                port=info.port,
                management_url=info.management_url,
                data_dir=str(cluster.data_dir / "node"),
                nodes=[
                    {"name": i.name, "pid": i.pid, "port": i.port, "management_url": i.management_url} for i in infos
                ],
            )
        )
    else:
        view.show_started(infos, started)


@app.command()
def stop(data_dir: DataDirOpt = None, json_: JsonOpt = False) -> None:
    """Stop celeryctl's private node (every member of a local cluster); no process of it is left behind."""
    cluster = _cluster(data_dir)
    with render.spinner("stopping RabbitMQ", quiet=json_) as update:
        was_running = cluster.stop(on_progress=update)
    if json_:
        render.emit_json(render.ok_doc(stopped=was_running, was_running=was_running, nodes=cluster.size))
    else:
        render.out.print("stopped" if was_running else "not running")


@app.command()
def status(data_dir: DataDirOpt = None, json_: JsonOpt = False) -> None:
    """Show whether the private node runs: pid, ports, RabbitMQ version, data dir.

    For a local cluster: each member (running, pid, ports, alarms) and the network partitions.
    Exits 0 when it runs (every member of a cluster), 6 when it does not or a member is down
    (with --json: ok false, the status in error.details).
    """
    cluster = _cluster(data_dir)
    if cluster.is_cluster:
        _cluster_status(cluster, json_)
        return
    node = cluster.members[0]
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


def _cluster_status(cluster: Cluster, json_: bool) -> None:
    with render.spinner("asking the cluster", quiet=json_):
        st = cluster.status()
    doc = st.to_dict()
    down = [m.name for m in st.members if not m.running]
    if down:
        if not json_:
            view.show_cluster_status(st)
        what = (
            f"celeryctl's {len(st.members)}-node cluster in {cluster.data_dir} is not running"
            if not st.running
            else f"{len(st.running)} of {len(st.members)} cluster members run; down: {', '.join(down)}"
        )
        raise UnreachableError(
            what,
            "start them with: celeryctl broker start",
            details=doc,
        )
    if json_:
        render.emit_json(render.ok_doc(**doc))
    else:
        view.show_cluster_status(st)
