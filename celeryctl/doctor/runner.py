"""The check runner: every check, in the documented order, as fast as they can go.

Independent work runs at the same time: the Celery app is imported in one thread and the local
node is asked about alarms (an Erlang VM boot, ~0.5 s) in another while the network checks run.
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
from celeryctl.doctor.local_node import LocalResult, alarms_check, check_local_node
from celeryctl.doctor.network import NetworkResult, check_network, check_settings
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


class TcpSignal:
    """Tells the local-node check whether an AMQP server answers (set once the network check knows)."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.ok: list[bool] = []

    def tell(self, ok: bool) -> None:
        self.ok.append(ok)
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
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="doctor")
    try:
        app_future: Future[AppResult] = pool.submit(check_app, settings)
        if app_may_name_its_broker(settings):
            say("loading the Celery app")
            target = app_broker(settings_check, target, app_future.result().app)
        net, local_future = _check_broker(pool, settings, target, say)
        results.update(net.checks)
        say("loading the Celery app")
        app_result = app_future.result()
        results["app"] = app_result.check
        say("asking the workers")
        results.update(_with_app(app_result, net, target, settings))
        say("asking the local node")
        local = local_future.result()
    finally:
        pool.shutdown(wait=True)
    results["local_node"] = local.check
    results["alarms"] = alarms_check(net, local if target.on_this_machine else None)
    if results["tcp"].status != OK or results["handshake"].status != OK:
        results["alarms"] = skip("alarms", "not connected to the broker")
    results["versions"] = check_versions(net.server_product, net.server_version)
    return _report(results, started, target.masked)


def _check_broker(
    pool: ThreadPoolExecutor, settings: Settings, target: BrokerUrl, say: Callable[[str], None]
) -> tuple[NetworkResult, Future[LocalResult]]:
    """The network checks here, the local node's in the pool (it waits to hear whether TCP works)."""
    timeout = settings.doctor_timeout
    tcp = TcpSignal()
    local_future = pool.submit(check_local_node, settings, target, tcp.ready, tcp.ok, timeout)
    say(f"checking the broker at {target.masked}")
    try:
        net = check_network(target, timeout, tcp.tell)
    finally:
        tcp.ready.set()  # never leave the local check waiting
    return net, local_future


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
    out = check_with_app(app, target.url, app_result.queues, timeout, ping_timeout, publish=not blocked)
    perms = net.checks.get("permissions")
    if perms is not None and perms.status == FAIL:
        # Same cause as the permissions failure: do not report it twice.
        for name in ("backend", "workers"):
            if out[name].status == FAIL:
                out[name] = skip(name, "missing permissions (see above)")
    return out


def _report(results: dict[str, Check], started: float, broker: str | None) -> DoctorReport:
    checks = [results.get(name) or skip(name, "not run") for name in TITLES]
    return DoctorReport(checks, time.monotonic() - started, broker)
