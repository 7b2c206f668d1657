"""Which broker ``setup-broker`` reads and writes, and through what: rabbitmqctl or the management API.

The management API is used only when a management URL is set explicitly (``--api URL``,
CELERYCTL_MANAGEMENT_URL or ``management_url`` in the settings file): with rabbitmqctl at hand,
celeryctl's own node is provisioned the way it always was.  Otherwise ``--node`` (or
CELERYCTL_NODE) > celeryctl's running node > the system node, through rabbitmqctl.

The broker URL that ``setup-broker`` saves points at the same broker: through the API its host is
the API's host and its port the AMQP listener the API reports (``/api/overview``), unless
``--host`` / ``--port`` say otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from celeryctl import validate
from celeryctl.broker import DEFAULT_PORT
from celeryctl.errors import UsageError
from celeryctl.rabbitmq.ctl import Runner, check_node_name

if TYPE_CHECKING:
    from celeryctl.rabbitmq.api import ManagementApi
    from celeryctl.rabbitmq.definitions import Backend
    from celeryctl.settings import Settings


@dataclass
class Target:
    runner: Backend  # a Runner (rabbitmqctl) or a ManagementApi
    description: str
    host: str
    port: int

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


def resolve_target(
    settings: Settings,
    node: str | None,
    host: str | None,
    port: int | None,
    *,
    api_password: str | None = None,
    amqp: bool = True,
) -> Target:
    """The management API when a management URL is set; else ``--node`` (or CELERYCTL_NODE) >
    celeryctl's running node > the system node.

    ``api_password`` is the admin's password read from ``--api-password-stdin``; ``amqp=False``
    (deleting: no URL to build) spares asking the API for its AMQP port.
    """
    from celeryctl.rabbitmq.node import HOST

    if port is not None:
        validate.port(port, "--port")
    if host and host.startswith("[") and host.endswith("]"):  # an IPv6 address as written in a URL
        host = host[1:-1]
    if settings.management_url:
        if node:
            raise UsageError(
                f"--node and the management URL ({settings.sources.get('management_url', '--api')}) "
                "name two ways to the broker",
                "give one: --node for rabbitmqctl, or --api URL for the management API",
            )
        return _api_target(settings, host, port if port or amqp else DEFAULT_PORT, api_password)
    if api_password is not None:
        raise UsageError(
            "--api-password-stdin: no management URL is set",
            "give the API with --api URL (or CELERYCTL_MANAGEMENT_URL), or drop --api-password-stdin",
        )
    source = "--node" if node else settings.sources.get("node", "CELERYCTL_NODE")
    node = node or settings.node
    if node:
        check_node_name(node, source)  # a flag; CELERYCTL_NODE and the file were checked when loaded
        return Target(Runner(node=node), f"node {node}", host or "localhost", port or DEFAULT_PORT)
    private = settings.local_node()
    info = private.running_info()
    if info is not None:
        return Target(private.runner(info), f"celeryctl's node {info.name}", host or HOST, port or info.port)
    return Target(Runner(), "the system node", host or "localhost", port or DEFAULT_PORT)


def _api_target(settings: Settings, host: str | None, port: int | None, api_password: str | None) -> Target:
    from celeryctl.rabbitmq.api import resolve_api

    api = resolve_api(settings, settings.broker_url, password=api_password)
    if api is None:  # pragma: no cover - management_url is set, so resolve_api finds it
        raise UsageError("no management URL is set", "give --api URL")
    try:
        amqp = port or amqp_port(api)
    except BaseException:
        api.close()
        raise
    return Target(api, api.description, host or api.url.host, amqp)
