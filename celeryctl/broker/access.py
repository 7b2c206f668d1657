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
) -> BrokerUrl:
    """Raise exit 6 unless an AMQP server answers at ``url`` (retrying for ``wait`` seconds), and
    with ``login`` exit 7 unless the URL's user may log in to its vhost; the broker that answered.

    A failover list (``amqp://h1;amqp://h2``) is tried host by host, in order: the first that
    answers (and accepts the login) is enough.  Only when every host fails is it an error, naming
    each host and why (exit 7 when a login or vhost was refused).  The handshake is raw AMQP (no
    pika import): a broker that is down fails in milliseconds.  ``suffix`` is added to the message
    (``; nothing was submitted``), ``hint`` replaces the hint of an unreachable broker.
    """
    from celeryctl.probe import amqp_handshake, check_access

    target = parse(url)
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        failures: list[tuple[BrokerUrl, str | None, str]] = []
        for one in target.each():
            shake = amqp_handshake(one.host, one.port, timeout=timeout)
            if not shake.ok:
                failures.append((one, shake.kind, str(shake.error)))
                continue
            if not login:
                return one
            report = check_access(one, timeout=timeout, check_permissions=False)
            if report.ok:
                return one
            failures.append((one, report.kind, report.error or "login failed"))
        refused = any(kind in ("auth", "vhost") for _one, kind, _e in failures)
        if refused or time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
    raise _failed(target, failures, suffix, hint)


def _failed(
    target: BrokerUrl, failures: list[tuple[BrokerUrl, str | None, str]], suffix: str, hint: str
) -> Exception:
    """One error for a broker (or every host of a failover list) that failed: 7 when a login was
    refused, else 6; each host is named with its own reason."""
    refusal = next(((one, kind, e) for one, kind, e in failures if kind in ("auth", "vhost")), None)
    if len(failures) == 1:
        one, kind, error = failures[0]
        if refusal is not None:
            return access_error(one, kind, error, suffix=suffix)
        return UnreachableError(f"cannot reach the broker at {one.masked}: {error}{suffix}", hint, details={"kind": kind})
    hosts = [str(one.hosts[0]) for one, _k, _e in failures]
    reasons = "; ".join(f"{host}: {error}" for host, (_one, _k, error) in zip(hosts, failures, strict=True))
    details: dict[str, object] = {"kind": refusal[1] if refusal else failures[0][1], "hosts": hosts}
    if refusal is not None:
        return AccessRefusedError(
            f"no broker of the list {target.masked} let the user in: {reasons}{suffix}", CREDENTIALS_HINT, details=details
        )
    return UnreachableError(
        f"cannot reach any of the {len(hosts)} brokers of the list: {reasons}{suffix}", hint, details=details
    )


def connect(url: str | BrokerUrl, timeout: float = 3.0) -> Any:
    """A pika ``BlockingConnection`` to the first host of ``url`` that answers (a failover list is
    tried in order); failures are exit 6 or 7 as in :func:`ensure_reachable`."""
    import pika
    import pika.exceptions

    from celeryctl.probe import classify_pika_error

    target = parse(url)
    failures: list[tuple[BrokerUrl, str | None, str]] = []
    for one in target.each():
        try:
            return pika.BlockingConnection(one.pika_parameters(timeout))
        except (pika.exceptions.AMQPError, OSError) as exc:
            kind, message = classify_pika_error(exc, one.host, one.port, one.vhost, one.user)
            failures.append((one, kind, message))
            if kind in ("auth", "vhost"):  # the same users on every member: another host refuses too
                break
    raise _failed(target, failures, "", START_HINT)


def close_quietly(conn: Any) -> None:
    """Close a pika or kombu connection or channel that may already be broken."""
    try:
        close = getattr(conn, "close", None) or conn.release
        close()
    except Exception:  # noqa: BLE001 - closing what the broker (or the network) already closed
        pass
