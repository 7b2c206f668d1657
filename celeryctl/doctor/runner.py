"""The check runner: every check, in the documented order, as fast as they can go.

Independent work runs at the same time: the Celery app is imported in one thread, the local
node is asked about alarms (an Erlang VM boot, ~0.5 s) in another and the management API (when
there is one) in a third, while the network checks run.
The broker to check is decided once, before the network checks: the settings' broker, or the
one the app's workers use when the app names its own (then the app is loaded first).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celeryctl.broker import BrokerUrl
from celeryctl.doctor.app import AppResult, app_broker, app_may_name_its_broker, check_app, check_with_app
from celeryctl.doctor.check import FAIL, OK, SKIP, TITLES, WARN, Check, skip
from celeryctl.doctor.cluster import ClusterView, members_check, quorum_check, read_local_cluster, unanswered
from celeryctl.doctor.compat import app_settings, check_compat
from celeryctl.doctor.local_node import LocalResult, alarms_check, check_local_node
from celeryctl.doctor.management import ManagementResult, check_management_api
from celeryctl.doctor.network import NetworkResult, check_network, check_settings
from celeryctl.doctor.reliability import check_queue_shape
from celeryctl.doctor.security import check_guest, check_serializer
from celeryctl.doctor.versions import check_versions
from celeryctl.settings import Settings


@dataclass
class DoctorReport:
    checks: list[Check]
    seconds: float
    broker_url: str | None = None  # masked

    def counts(self) -> dict[str, int]:
        out = {OK: 0, WARN: 0, FAIL: 0, SKIP: 0}
        for check in self.checks:
            out[check.status] = out.get(check.status, 0) + 1
        return out

    def failed(self, strict: bool = False) -> bool:
        bad = (FAIL, WARN) if strict else (FAIL,)
        return any(c.status in bad for c in self.checks)

    def to_dict(self, strict: bool = False) -> dict[str, Any]:
        return {
            "ok": not self.failed(strict),
            "strict": strict,
            "seconds": round(self.seconds, 4),
            "broker_url": self.broker_url,
            "counts": self.counts(),
            "checks": [c.to_dict() for c in self.checks],
        }


class LocalCheck:
    """The local-node check, running in the pool.  It waits to hear from the network check
    whether an AMQP server answers (:meth:`tell`) before it boots an Erlang VM to ask a node."""

    def __init__(self, pool: ThreadPoolExecutor, settings: Settings, target: BrokerUrl) -> None:
        self.ready = threading.Event()
        self.ok: list[bool] = []
        self.future: Future[LocalResult] = pool.submit(
            check_local_node, settings, target, self.ready, self.ok, settings.doctor_timeout
        )

    def tell(self, ok: bool) -> None:
        self.ok.append(ok)
        self.ready.set()

    def release(self) -> None:
        """Never leave it waiting (the network check failed early, or its answer is not wanted)."""
        self.ready.set()


def run_doctor(
    flags: Mapping[str, Any] | None = None,
    *,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> DoctorReport:
    """Run every check and return them in the documented order.

    ``flags`` are settings keys (``broker_url``, ``app``, ``doctor_timeout``, ``ping_timeout``...)
    on top of the environment and the settings file.
    """
    say = on_progress or (lambda _msg: None)
    started = time.monotonic()
    settings_check, settings, target = check_settings(flags or {}, config, env, cwd)
    results: dict[str, Check] = {"settings": settings_check}
    if settings is None or target is None:
        for name in TITLES:
            if name not in ("settings", "versions"):
                results[name] = skip(name, "the settings do not resolve")
        results["versions"] = check_versions(None, None)
        return _report(results, started, None)
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="doctor")
    try:
        app_future: Future[AppResult] = pool.submit(check_app, settings)
        target, local_check = _decide_broker(pool, settings, settings_check, target, app_future, say)
        # A few HTTP requests: beside the network checks, never after them.
        mgmt_future: Future[ManagementResult] = pool.submit(
            check_management_api, settings, target, settings.doctor_timeout
        )
        # celeryctl's local cluster: rabbitmqctl calls on its members, all at once, beside them too.
        cluster_future: Future[ClusterView | None] = pool.submit(
            read_local_cluster, settings, target, settings.doctor_timeout
        )
        say(f"checking the broker at {target.masked}")
        try:
            net = check_network(target, settings.doctor_timeout, local_check.tell)
        finally:
            local_check.release()
        results.update(net.checks)
        results["guest"] = _guest(net, target, settings)
        say("loading the Celery app")
        app_result = app_future.result()
        results["app"] = app_result.check
        app = app_result.app
        results["serializer"] = check_serializer(app) if app is not None else skip("serializer", "the app did not load")
        say("asking the workers")
        results.update(_with_app(app_result, net, target, settings))
        say("checking the queues' type and dead letters")
        results.update(_queue_shape(app_result, net, target, settings))
        say("asking the local node")
        local = local_check.future.result()
        mgmt = mgmt_future.result()
        local_view = cluster_future.result()
    finally:
        pool.shutdown(wait=True)
    results["local_node"] = local.check
    results["management"] = mgmt.check
    # The local cluster's members through rabbitmqctl when it is celeryctl's, else the API's view.
    view = local_view or mgmt.view
    results["cluster"] = mgmt.cluster
    if local_view is not None:
        results["cluster"] = members_check(local_view) if local_view.members else unanswered(local_view)
    results["quorum"] = quorum_check(view, target.vhost)
    if mgmt.alarms is None and local_view is not None and local_view.members:
        results["alarms"] = alarms_check(net, local, local_view.alarms, source="the cluster reports")
    else:
        results["alarms"] = alarms_check(net, local if target.on_this_machine else None, mgmt.alarms)
    if not net.connected:
        results["alarms"] = skip("alarms", "not connected to the broker")
    results["versions"] = check_versions(net.server_product, net.server_version)
    results["compat"] = _compat(app_result, results, net, view)
    return _report(results, started, target.masked)


def _compat(app_result: AppResult, results: dict[str, Check], net: NetworkResult, view: ClusterView | None) -> Check:
    """Compatibility, from the server's version, the app's settings and the vhost's policies."""
    if net.server_version is None:
        return skip("compat", "the server's version is not known (not connected)")
    app = app_result.app
    quorum = results.get("queue_types", skip("queue_types", "")).data.get("queue_type") == "quorum"
    settings = app_settings(app, quorum) if app is not None else None
    return check_compat(net.server_version, settings, view.policies if view else None, view.source if view else None)


def _decide_broker(
    pool: ThreadPoolExecutor,
    settings: Settings,
    settings_check: Check,
    target: BrokerUrl,
    app_future: Future[AppResult],
    say: Callable[[str], None],
) -> tuple[BrokerUrl, LocalCheck]:
    """The broker to check, once: the settings', or the app's own when it may name one (then the
    app must load first).  The local-node check starts at once on the settings' broker: almost
    always the app's too; when the app's differs, that check is released and started again."""
    local_check = LocalCheck(pool, settings, target)
    if not app_may_name_its_broker(settings):
        return target, local_check
    say("loading the Celery app")
    own = app_broker(settings_check, target, app_future.result().app)
    if own is target:
        return target, local_check
    local_check.release()  # its answer is about the other broker: dropped
    return own, LocalCheck(pool, settings, own)


def _with_app(app_result: AppResult, net: NetworkResult, target: BrokerUrl, settings: Settings) -> dict[str, Check]:
    """Backend, workers and queues, when the app loaded and the broker lets us in."""
    names = ("backend", "workers", "queues")
    app = app_result.app
    if app is None:
        return {name: skip(name, "the app did not load") for name in names}
    if not net.usable:
        return {name: skip(name, "the broker is not usable (see above)") for name in names}
    blocked = net.access is not None and net.access.kind == "blocked"
    timeout, ping_timeout = settings.doctor_timeout, settings.ping_timeout
    # Of a failover list, the node that answered (kombu's connect() tries only the first).
    url = (net.live or target).url
    out = check_with_app(app, url, app_result.queues, timeout, ping_timeout, publish=not blocked)
    perms = net.checks.get("permissions")
    if perms is not None and perms.status == FAIL:
        # Same cause as the permissions failure: do not report it twice.
        for name in ("backend", "workers"):
            if out[name].status == FAIL:
                out[name] = skip(name, "missing permissions (see above)")
    return out


def _guest(net: NetworkResult, target: BrokerUrl, settings: Settings) -> Check:
    if not net.connected:
        return skip("guest", "not connected to the broker")
    return check_guest(net.live or target, min(settings.doctor_timeout, 2.0))


def _queue_shape(app_result: AppResult, net: NetworkResult, target: BrokerUrl, settings: Settings) -> dict[str, Check]:
    """Queue types and dead letters, when the app loaded and the broker lets us look."""
    names = ("queue_types", "dead_letters")
    if app_result.app is None:
        return {name: skip(name, "the app did not load") for name in names}
    if not net.usable:
        return {name: skip(name, "the broker is not usable (see above)") for name in names}
    perms = net.checks.get("permissions")
    if perms is not None and perms.status == FAIL:
        return {name: skip(name, "missing permissions (see above)") for name in names}
    return check_queue_shape(app_result.app, net.live or target, settings)


def _report(results: dict[str, Check], started: float, broker: str | None) -> DoctorReport:
    checks = [results.get(name) or skip(name, "not run") for name in TITLES]
    return DoctorReport(checks, time.monotonic() - started, broker)
