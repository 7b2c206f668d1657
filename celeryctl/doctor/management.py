"""The management API checks: the API itself (reachable, version, the user's tags) and the
cluster's members; the API's alarms feed the resource-alarms check.

They run when a management URL is set (``--api``, CELERYCTL_MANAGEMENT_URL, the settings file)
or celeryctl's node runs the management plugin, on any broker: where rabbitmqctl cannot reach
(another host, a container, a managed service) the API still tells the version, the alarms per
node and which members run.  Four small HTTP requests, in a thread beside the network checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeryctl.doctor.check import FAIL, OK, WARN, Check, skip
from celeryctl.errors import CeleryctlError, PermissionDeniedError
from celeryctl.rabbitmq.api import OWN_NODE

if TYPE_CHECKING:
    from celeryctl.broker import BrokerUrl
    from celeryctl.rabbitmq.api import ManagementApi
    from celeryctl.settings import Settings

#: The tags that let a user see every queue's unacked count, other users' objects and the nodes.
SEES_ALL = ("monitoring", "administrator")
NOT_SET = (
    "no management URL: not asked (for a broker rabbitmqctl cannot reach, set --api http://HOST:15672/ "
    "or CELERYCTL_MANAGEMENT_URL; celeryctl broker start --management for celeryctl's node)"
)


@dataclass
class ManagementResult:
    check: Check  # "management"
    cluster: Check  # "cluster"
    alarms: list[dict[str, Any]] | None = None  # None: not asked through the API


def check_management_api(settings: Settings, target: BrokerUrl, timeout: float) -> ManagementResult:
    """The management check, then (when it logged in) the cluster's members and its alarms."""
    from celeryctl.rabbitmq.api import resolve_api

    started = time.monotonic()
    try:
        api = resolve_api(settings, target, timeout=max(0.5, min(timeout, 3.0)))
    except CeleryctlError as exc:
        return ManagementResult(_failed(exc, started, ""), skip("cluster", "no login for the management API (see above)"))
    if api is None:
        return ManagementResult(
            Check("management", OK, 0.0, NOT_SET, data={"asked": False}),
            Check("cluster", OK, 0.0, "not asked: no management API", data={"asked": False}),
        )
    try:
        check = check_management(api, started)
        if check.status == FAIL and api.source == OWN_NODE:
            not_asked = Check("cluster", OK, 0.0, "not asked: the management API refused the login", data={"asked": False})
            return ManagementResult(_own_node_refused(check), not_asked)
        if check.status == FAIL:
            return ManagementResult(check, skip("cluster", "the management API did not answer (see above)"))
        cluster = check_cluster(api)
        alarms = _alarms(api)
    finally:
        api.close()
    return ManagementResult(check, cluster, alarms)


def check_management(api: ManagementApi, started: float | None = None) -> Check:
    """OK with the RabbitMQ version, cluster name and the user's tags; FAIL when the API does not
    answer or refuses the login (the exit code the commands would give, and its hint); WARN when
    the user lacks the monitoring tag (unacked counts and other vhosts hidden)."""
    started = time.monotonic() if started is None else started
    where = f"{api.url.base} ({api.source})" if api.source else api.url.base
    try:
        overview = api.get("api/overview", params={"columns": "rabbitmq_version,cluster_name,node"}) or {}
        who = api.whoami()
    except CeleryctlError as exc:
        return _failed(exc, started, where)
    tags = _tags(who.get("tags"))
    version = overview.get("rabbitmq_version")
    cluster_name = overview.get("cluster_name")
    user = str(who.get("name") or api.user)
    data = {
        "asked": True,
        "url": api.url.base,
        "source": api.source,
        "version": version,
        "cluster_name": cluster_name,
        "node": overview.get("node"),
        "user": user,
        "tags": tags,
    }
    detail = f"RabbitMQ {version} at {where}, cluster '{cluster_name}'; user '{user}' tags: {', '.join(tags) or 'none'}"
    seconds = time.monotonic() - started
    if not any(t in SEES_ALL for t in tags):
        return Check(
            "management",
            WARN,
            seconds,
            detail + " (no 'monitoring' tag: unacked counts, other vhosts and the nodes are hidden)",
            f"add the 'monitoring' tag, keeping the others: rabbitmqctl set_user_tags {user} "
            + " ".join(["monitoring", *tags]),
            data,
        )
    return Check("management", OK, seconds, detail, data=data)


def check_cluster(api: ManagementApi) -> Check:
    """Every cluster member and whether it runs (``/api/nodes``): WARN for a member that is
    down, FAIL for a network partition; the user needs the monitoring tag to see them."""
    started = time.monotonic()
    try:
        nodes = api.get("api/nodes", params={"columns": "name,running,partitions,mem_alarm,disk_free_alarm"}) or []
    except PermissionDeniedError as exc:
        return Check("cluster", OK, time.monotonic() - started, f"not asked: {exc.message}", data={"asked": False})
    except CeleryctlError as exc:
        return Check("cluster", WARN, time.monotonic() - started, exc.message, exc.hint, {"asked": True})
    members: list[dict[str, Any]] = [
        {"name": str(n.get("name")), "running": bool(n.get("running"))} for n in nodes if isinstance(n, dict)
    ]
    down = [str(m["name"]) for m in members if not m["running"]]
    partitions = sorted({str(p) for n in nodes if isinstance(n, dict) for p in n.get("partitions") or []})
    data = {"asked": True, "members": members, "partitions": partitions}
    seconds = time.monotonic() - started
    running = len(members) - len(down)
    if partitions:
        return Check(
            "cluster",
            FAIL,
            seconds,
            f"network partition: {', '.join(partitions)} cut off",
            "see RabbitMQ's partition handling (rabbitmq-diagnostics cluster_status on a member)",
            data,
        )
    if down:
        return Check(
            "cluster",
            WARN,
            seconds,
            f"{running} of {len(members)} member(s) running; not running: {', '.join(down)}",
            "start the stopped member(s), or remove them: rabbitmqctl forget_cluster_node NODE",
            data,
        )
    names = ", ".join(str(m["name"]) for m in members)
    return Check("cluster", OK, seconds, f"{running} member(s) running: {names}", data=data)


def _alarms(api: ManagementApi) -> list[dict[str, Any]] | None:
    """Alarms per node through the API; None when the user may not ask (then AMQP's view stands)."""
    try:
        return [a if isinstance(a, dict) else {"node": None, "resource": str(a)} for a in api.alarms()]
    except CeleryctlError:
        return None


def _own_node_refused(check: Check) -> Check:
    """celeryctl's node's API, found by itself, that does not let the broker URL's user in is no
    fault: status, queues and top use rabbitmqctl then.  A warning that says how to use the API."""
    return Check(
        "management",
        WARN,
        check.seconds,
        f"{check.detail.split(' (the commands would exit')[0]} (celeryctl's node); "
        "status, queues and top use rabbitmqctl instead",
        "to use the API, give the broker URL's user the 'monitoring' tag (celeryctl setup-broker --tags monitoring), "
        "or set CELERYCTL_MANAGEMENT_URL with an administrator's login",
        {**check.data, "fallback": "rabbitmqctl"},
    )


def _failed(exc: CeleryctlError, started: float, where: str) -> Check:
    exit_code = int(exc.exit_code)
    return Check(
        "management",
        FAIL,
        time.monotonic() - started,
        f"{exc.message} (the commands would exit {exit_code})",
        exc.hint,
        {"asked": True, "url": where or None, "exit_code": exit_code, "error": type(exc).__name__},
    )


def _tags(value: Any) -> list[str]:
    if isinstance(value, str):  # older brokers: "administrator,monitoring"
        return [t for t in (v.strip() for v in value.split(",")) if t]
    return [str(t) for t in value or []]
