"""Reaching the broker: celeryctl's own node, the AMQP handshake and login, a pika connection —
with one mapping of failures to exit codes (6 unreachable, 7 refused)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from celeryctl.broker.url import BrokerUrl, mask_url, parse
from celeryctl.errors import AccessRefusedError, UnreachableError

if TYPE_CHECKING:
    from celeryctl.rabbitmq.ctl import Runner
    from celeryctl.rabbitmq.node import Node, NodeInfo
    from celeryctl.settings import Settings

START_HINT = "start it (celeryctl broker start) or check --broker / CELERYCTL_BROKER_URL"
WAIT_HINT = (
    "start it (celeryctl broker start), check --broker / CELERYCTL_BROKER_URL, "
    "or wait for it with --wait-for-broker SECONDS"
)
CREDENTIALS_HINT = "check the user, password and vhost in the broker URL (celeryctl setup-broker creates them)"


# --------------------------------------------------------------------------- celeryctl's own node


def _own(settings: Settings, url: str | BrokerUrl) -> tuple[Node, NodeInfo] | None:
    """celeryctl's first running node (member of its local cluster) that ``url`` points at."""
    target = parse(url)
    for node in settings.local_cluster().members:
        info = node.running_info()
        if info is not None and target.is_node(info):
            return node, info
    return None


def own_node(settings: Settings, url: str | BrokerUrl) -> NodeInfo | None:
    """celeryctl's running node when ``url`` points at it (of a local cluster: the first running
    member the URL list names), else None."""
    found = _own(settings, url)
    return found[1] if found else None


def own_node_runner(settings: Settings, url: str | BrokerUrl, timeout: float = 10.0) -> Runner | None:
    """A rabbitmqctl runner for celeryctl's node (a running member of its cluster) when ``url``
    points at it, else None."""
    found = _own(settings, url)
    return found[0].runner(found[1], timeout=timeout) if found else None


def own_management_url(settings: Settings, url: str | BrokerUrl) -> str | None:
    """``http://127.0.0.1:PORT/`` of celeryctl's node when ``url`` is it and management is on."""
    info = own_node(settings, url)
    return info.management_url if info is not None else None


# --------------------------------------------------------------------------- reachability


def access_error(url: str | BrokerUrl, kind: str | None, message: str, *, suffix: str = "") -> Exception:
    """The one mapping of a failed connection: refused login or vhost -> exit 7, else exit 6."""
    shown = url.masked if isinstance(url, BrokerUrl) else mask_url(url)
    if kind in ("auth", "vhost"):
        return AccessRefusedError(
            f"the broker at {shown} refused access: {message}{suffix}", CREDENTIALS_HINT, details={"kind": kind}
        )
    return UnreachableError(
        f"cannot reach the broker at {shown}: {message}{suffix}", START_HINT, details={"kind": kind}
    )


def ensure_reachable(
    url: str | BrokerUrl,
    *,
    wait: float = 0.0,
    timeout: float = 2.0,
    login: bool = True,
    suffix: str = "",
    hint: str = WAIT_HINT,
) -> None:
    """Raise exit 6 unless an AMQP server answers at ``url`` (retrying for ``wait`` seconds), and
    with ``login`` exit 7 unless the URL's user may log in to its vhost.

    The handshake is raw AMQP (no pika import): a broker that is down fails in milliseconds.
    ``suffix`` is added to the message (``; nothing was submitted``), ``hint`` replaces the hint
    of an unreachable broker.
    """
    from celeryctl.probe import amqp_handshake, check_access

    target = parse(url)
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        shake = amqp_handshake(target.host, target.port, timeout=timeout)
        if shake.ok or time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
    if not shake.ok:
        raise UnreachableError(
            f"cannot reach the broker at {target.masked}: {shake.error}{suffix}", hint, details={"kind": shake.kind}
        )
    if not login:
        return
    report = check_access(target, timeout=timeout, check_permissions=False)
    if not report.ok:
        raise access_error(target, report.kind, report.error or "login failed", suffix=suffix)


def connect(url: str | BrokerUrl, timeout: float = 3.0) -> Any:
    """A pika ``BlockingConnection``; failures are exit 6 or 7 as in :func:`ensure_reachable`."""
    import pika
    import pika.exceptions

    from celeryctl.probe import classify_pika_error

    target = parse(url)
    params = target.pika_parameters(timeout)
    try:
        return pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, OSError) as exc:
        kind, message = classify_pika_error(exc, target.host, target.port, target.vhost, target.user)
        raise access_error(target, kind, message) from None


def close_quietly(conn: Any) -> None:
    """Close a pika or kombu connection or channel that may already be broken."""
    try:
        close = getattr(conn, "close", None) or conn.release
        close()
    except Exception:  # noqa: BLE001 - closing what the broker (or the network) already closed
        pass
