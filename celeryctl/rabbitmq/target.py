"""Which broker ``setup-broker`` reads and writes, and through what: rabbitmqctl or the management API.

The management API is used only when a management URL is set explicitly (``--api URL``,
CELERYCTL_MANAGEMENT_URL or ``management_url`` in the settings file): with rabbitmqctl at hand,
celeryctl's own node is provisioned the way it always was.  Otherwise ``--node`` (or
CELERYCTL_NODE) > celeryctl's running node > the system node, through rabbitmqctl.

Users, vhosts and permissions are cluster-wide in RabbitMQ, so a cluster is written once, through
one node: of celeryctl's local cluster the first member that runs (member 1 may be down).  The
target also lists every node of the broker (its ``endpoints``): each one's host:port goes into the
saved URL (Celery's ``;``-separated failover list) and each is verified by a login.  They are the
members of celeryctl's local cluster, or the hosts of ``--broker URL;URL``.

The broker URL that ``setup-broker`` saves points at the same broker: through the API its host is
the API's host and its port the AMQP listener the API reports (``/api/overview``), unless
``--host`` / ``--port`` (or ``--broker``) say otherwise.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celeryctl import validate
from celeryctl.broker import DEFAULT_PORT
from celeryctl.broker.url import MAX_HOST_BYTES, BrokerUrl, Host, build_amqp_url, host_problem
from celeryctl.errors import ConfigError, UnreachableError, UsageError
from celeryctl.rabbitmq.ctl import Runner, check_node_name

if TYPE_CHECKING:
    from celeryctl.rabbitmq.api import ManagementApi
    from celeryctl.rabbitmq.definitions import Backend
    from celeryctl.rabbitmq.plan import Request
    from celeryctl.settings import Settings


@dataclass(frozen=True)
class Endpoint:
    """One node of the broker as the saved URL names it; ``node``: its RabbitMQ name when known."""

    host: str
    port: int
    node: str | None = None

    @property
    def address(self) -> str:
        return str(Host(self.host, self.port))


@dataclass
class Target:
    runner: Backend  # a Runner (rabbitmqctl) or a ManagementApi
    description: str
    host: str
    port: int
    endpoints: tuple[Endpoint, ...] = field(default=())  # every node; () = just host:port
    scheme: str = "amqp"
    hosts_from: str = "--host"  # the flag that named the hosts, for errors about them

    def __post_init__(self) -> None:
        if not self.endpoints:
            self.endpoints = (Endpoint(self.host, self.port),)

    @property
    def via(self) -> str:
        return "rabbitmqctl" if isinstance(self.runner, Runner) else "api"

    def close(self) -> None:
        if not isinstance(self.runner, Runner):
            self.runner.close()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def amqp_port(api: ManagementApi) -> int:
    """The AMQP listener port the broker reports (``/api/overview``), else 5672."""
    for listener in api.overview().get("listeners") or []:
        if isinstance(listener, dict) and listener.get("protocol") == "amqp" and isinstance(listener.get("port"), int):
            return int(listener["port"])
    return DEFAULT_PORT


def _broker_target(
    runner: Backend, description: str, broker: BrokerUrl, names: dict[tuple[str, int], str] | None = None
) -> Target:
    """A target whose nodes are ``--broker``'s hosts, in its order."""
    names = names or {}
    endpoints = tuple(Endpoint(h.host, h.port, names.get((h.host, h.port))) for h in broker.hosts)
    first = endpoints[0]
    return Target(runner, description, first.host, first.port, endpoints, scheme=broker.scheme, hosts_from="--broker")


def resolve_target(
    settings: Settings,
    node: str | None,
    host: str | None,
    port: int | None,
    *,
    broker: BrokerUrl | None = None,
    api_password: str | None = None,
    amqp: bool = True,
) -> Target:
    """The management API when a management URL is set; else ``--node`` (or CELERYCTL_NODE) >
    celeryctl's running node (the first running member of its local cluster) > the system node.

    ``broker`` (``--broker``, possibly a ``;`` list) names the broker's nodes instead of
    ``--host``/``--port``; with celeryctl's local cluster it also picks the member written through.
    ``api_password`` is the admin's password read from ``--api-password-stdin``; ``amqp=False``
    (deleting: no URL to build) spares asking the API for its AMQP port.
    """
    from celeryctl.rabbitmq.node import HOST

    if port is not None:
        validate.port(port, "--port")
    if broker is not None and (host is not None or port is not None):
        raise UsageError(
            "--broker and --host/--port both name the broker's hosts",
            "give one: --broker 'amqp://h1:5672;amqp://h2:5672' for a list, or --host/--port for one host",
        )
    if host and host.startswith("[") and host.endswith("]"):  # an IPv6 address as written in a URL
        host = host[1:-1]
    if settings.management_url:
        if node:
            raise UsageError(
                f"--node and the management URL ({settings.sources.get('management_url', '--api')}) "
                "name two ways to the broker",
                "give one: --node for rabbitmqctl, or --api URL for the management API",
            )
        return _api_target(settings, host, port if port or amqp else DEFAULT_PORT, api_password, broker)
    if api_password is not None:
        raise UsageError(
            "--api-password-stdin: no management URL is set",
            "give the API with --api URL (or CELERYCTL_MANAGEMENT_URL), or drop --api-password-stdin",
        )
    source = "--node" if node else settings.sources.get("node", "CELERYCTL_NODE")
    node = node or settings.node
    if node:
        check_node_name(node, source)  # a flag; CELERYCTL_NODE and the file were checked when loaded
        if broker is not None:
            return _broker_target(Runner(node=node), f"node {node}", broker)
        return Target(Runner(node=node), f"node {node}", host or "localhost", port or DEFAULT_PORT)
    local = _local_target(settings, host, port, broker, HOST)
    if local is not None:
        return local
    if broker is not None:
        return _broker_target(Runner(), "the system node", broker)
    return Target(Runner(), "the system node", host or "localhost", port or DEFAULT_PORT)


def _local_target(
    settings: Settings, host: str | None, port: int | None, broker: BrokerUrl | None, default_host: str
) -> Target | None:
    """celeryctl's node, written through its first running member; None when none runs (and
    ``broker``, if given, names none of its members)."""
    cluster = settings.local_cluster()
    infos = cluster.infos()  # every member's last known name and port, running or not
    names = {(default_host, i.port): i.name for i in infos}
    for member in cluster.members:
        info = member.running_info()
        if info is None or (broker is not None and not broker.is_node(info)):
            continue
        runner = member.runner(info)
        what = f"celeryctl's node {info.name}"
        if cluster.is_cluster:
            what += f" (of its {cluster.size}-node cluster)"
        if broker is not None:
            return _broker_target(runner, what, broker, names)
        if port is not None:  # one listener named: the URL has that one host
            return Target(runner, what, host or default_host, port)
        endpoints = tuple(Endpoint(host or default_host, i.port, i.name) for i in infos)
        return Target(runner, what, endpoints[0].host, endpoints[0].port, endpoints)
    if broker is not None and any(broker.is_node(i) for i in infos):
        raise UnreachableError(
            f"no node of celeryctl's {'cluster' if cluster.is_cluster else 'node'} that --broker names is running "
            f"({broker.masked})",
            "start it: celeryctl broker start",
        )
    return None


def _api_target(
    settings: Settings, host: str | None, port: int | None, api_password: str | None, broker: BrokerUrl | None
) -> Target:
    from celeryctl.rabbitmq.api import resolve_api

    # --broker names hosts only: the API's login is never taken from it (no password in argv).
    api = resolve_api(settings, settings.broker_url, password=api_password)
    if api is None:  # pragma: no cover - management_url is set, so resolve_api finds it
        raise UsageError("no management URL is set", "give --api URL")
    if broker is not None:
        return _broker_target(api, api.description, broker)
    try:
        amqp = port or amqp_port(api)
    except BaseException:
        api.close()
        raise
    return Target(api, api.description, host or api.url.host, amqp)


def check_url(request: Request, host: str, port: int, flag: str = "--host") -> None:
    """The URL that will be saved parses as given (``--host``, ``--port``; ``flag``: which flag gave
    the host), and its host resolves."""
    if host == "" or len(host.encode("utf-8", "surrogatepass")) > MAX_HOST_BYTES:
        raise UsageError(
            f"{flag}: {'an empty host' if not host else f'the host is longer than {MAX_HOST_BYTES} bytes'}",
            "give a host name or an address, e.g. --host 127.0.0.1",
        )
    problem = host_problem(host.strip("[]") if host.startswith("[") else host)
    if problem:  # the one host check BrokerUrl.parse uses, worded for the flag
        raise UsageError(f"{flag}: {problem}", "e.g. --host 127.0.0.1 or --host rabbit.example.com")
    url = build_amqp_url(request.user, "****", host, port, request.vhost)
    try:
        parsed = BrokerUrl.parse(url, flag)
        same = parsed.host.lower() == host.strip("[]").lower() and parsed.port == port
    except ConfigError:
        same = False
    if not same or any(c.isspace() or not c.isprintable() for c in host):
        raise UsageError(
            f"{flag}: {host!r} is not a host name or an address", "e.g. --host 127.0.0.1 or --host rabbit.example.com"
        )
    try:
        socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UnreachableError(
            f"{flag}: cannot resolve {host}: {exc.strerror}",
            "check the name (it goes into the saved broker URL), or give an address, e.g. --host 127.0.0.1",
        ) from None
