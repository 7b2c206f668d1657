"""Checks 1-6: the settings, then the broker over the network.

TCP, the AMQP handshake, then one login (:func:`celeryctl.probe.check_access`) that answers
authentication, virtual host and permissions.  Each step that fails skips the ones after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celeryctl.broker import BrokerUrl
from celeryctl.doctor.check import FAIL, OK, WARN, Check, skip
from celeryctl.errors import CeleryctlError
from celeryctl.settings import Settings, load_settings

if TYPE_CHECKING:
    from celeryctl.probe import AccessReport

BROKER_HINT = "start celeryctl's node (celeryctl broker start), or fix host/port in --broker / CELERYCTL_BROKER_URL"
CREDENTIALS_HINT = (
    "check the user and password in the broker URL (--broker / CELERYCTL_BROKER_URL / celeryctl.toml), "
    "or re-run celeryctl setup-broker"
)
#: What a failed connection attempt reports before the broker said who we are.
NOT_CONNECTED = ("refused", "timeout", "dns", "closed")


# --------------------------------------------------------------------------- check 1: settings


def check_settings(
    flags: Mapping[str, Any], config: Path | None, env: Mapping[str, str] | None, cwd: Path | None
) -> tuple[Check, Settings | None, BrokerUrl | None]:
    """Load the settings (flag > env > file > default) and parse their broker URL."""
    started = time.monotonic()
    try:
        settings = load_settings(flags, config=config, env=env, cwd=cwd)
        target = settings.broker_target
    except CeleryctlError as exc:
        return Check("settings", FAIL, time.monotonic() - started, exc.message, exc.hint), None, None
    detail = f"broker {target.masked} ({settings.sources.get('broker_url', 'default')})"
    data = settings.to_dict()
    data["broker"] = {"host": target.host, "port": target.port, "user": target.user, "vhost": target.vhost}
    check = Check("settings", OK, time.monotonic() - started, detail, data=data)
    if settings.warnings:
        check.status = WARN
        check.detail += "; " + "; ".join(settings.warnings)
        check.hint = "restrict the settings file to its owner: chmod 600 FILE"
    return check, settings, target


# --------------------------------------------------------------------------- checks 2-6: the broker


@dataclass
class NetworkResult:
    checks: dict[str, Check]
    access: AccessReport | None = None
    blocked_seconds: float = 0.0
    server_version: str | None = None
    server_product: str | None = None
    live: BrokerUrl | None = None  # the entry of a failover list that answered first (the checks' broker)

    def skip(self, names: tuple[str, ...], why: str) -> None:
        for name in names:
            self.checks[name] = skip(name, why)

    @property
    def connected(self) -> bool:
        """A node answered TCP and AMQP (TCP warns when some nodes of a failover list are down)."""
        return self.checks["tcp"].status in (OK, WARN) and self.checks["handshake"].status == OK

    @property
    def usable(self) -> bool:
        """Connected and logged in to the virtual host (permissions may still be missing)."""
        return self.connected and all(self.checks[n].status == OK for n in ("auth", "vhost"))


def check_network(target: BrokerUrl, timeout: float, on_tcp: Callable[[bool], None] | None = None) -> NetworkResult:
    """TCP, handshake, authentication, virtual host and permissions (one login for the last three).

    ``on_tcp`` is told as soon as it is known whether an AMQP server answers (TCP, then the
    handshake): the local-node check waits for that before it boots an Erlang VM to ask a node.
    """
    res = NetworkResult({})
    budget = _tcp_each(res, target, timeout, on_tcp) if len(target.hosts) > 1 else _tcp(res, target, timeout, on_tcp)
    if budget is None:
        return res
    target = res.live or target
    # amqps: the TLS handshake is done by pika during the login
    if not target.tls and not _handshake(res, target, budget, timeout, on_tcp):
        return res
    _login(res, target, budget)
    return res


def _tcp(res: NetworkResult, target: BrokerUrl, timeout: float, on_tcp: Callable[[bool], None] | None) -> float | None:
    """Check 2; returns the time left for the handshake and login (None: no connection)."""
    from celeryctl.probe import tcp_connect

    where = f"{target.host}:{target.port}"
    tcp = tcp_connect(target.host, target.port, timeout)
    if on_tcp is not None and (not tcp.ok or target.tls):
        on_tcp(tcp.ok)
    if not tcp.ok:
        hint = {
            "dns": "check the host name in the broker URL",
            "timeout": "a firewall may drop the packets, or the host is down; check host and port",
        }.get(tcp.kind or "", BROKER_HINT)
        res.checks["tcp"] = Check("tcp", FAIL, tcp.seconds, tcp.error or "cannot connect", hint, {"kind": tcp.kind})
        res.skip(("handshake", "auth", "vhost", "permissions"), f"no TCP connection to {where}")
        return None
    res.checks["tcp"] = Check(
        "tcp", OK, tcp.seconds, f"{where} accepts connections ({tcp.address})", data={"address": tcp.address}
    )
    res.live = target
    # TCP and handshake share the timeout: a port that never answers costs `timeout`, no more.
    return max(0.2, timeout - tcp.seconds)


def _tcp_each(
    res: NetworkResult, target: BrokerUrl, timeout: float, on_tcp: Callable[[bool], None] | None
) -> float | None:
    """Check 2 for a failover list: every node at once.  Some down is a warning (the clients fail
    over to the others), all down a failure; the first that answers is the one checked further."""
    from concurrent.futures import ThreadPoolExecutor

    from celeryctl.probe import tcp_connect

    entries = target.each()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(entries), thread_name_prefix="doctor-tcp") as pool:
        answers = list(pool.map(lambda e: tcp_connect(e.host, e.port, timeout), entries))
    seconds = time.monotonic() - started
    nodes = [
        {"host": e.host, "port": e.port, "ok": a.ok, "address": a.address, "error": a.error, "kind": a.kind}
        for e, a in zip(entries, answers, strict=True)
    ]
    up = [e for e, a in zip(entries, answers, strict=True) if a.ok]
    down = [f"{e.host}:{e.port} ({a.kind or 'down'})" for e, a in zip(entries, answers, strict=True) if not a.ok]
    data: dict[str, Any] = {"nodes": nodes}
    if not up:
        if on_tcp is not None:
            on_tcp(False)
        res.checks["tcp"] = Check(
            "tcp",
            FAIL,
            seconds,
            f"none of the {len(entries)} nodes of the URL list accepts connections: {', '.join(down)}",
            BROKER_HINT + " (celeryctl broker start starts celeryctl's members that are down)",
            data,
        )
        res.skip(("handshake", "auth", "vhost", "permissions"), "no node of the URL list accepts TCP")
        return None
    res.live = up[0]
    data["checked"] = f"{up[0].host}:{up[0].port}"
    if target.tls and on_tcp is not None:
        on_tcp(True)
    if down:
        res.checks["tcp"] = Check(
            "tcp",
            WARN,
            seconds,
            f"{len(up)} of {len(entries)} nodes accept connections; down: {', '.join(down)} "
            f"(clients fail over to the others; checking {data['checked']})",
            "start the node(s) that are down (celeryctl broker start starts celeryctl's members)",
            data,
        )
    else:
        shown = ", ".join(f"{e.host}:{e.port}" for e in entries)
        res.checks["tcp"] = Check(
            "tcp", OK, seconds, f"all {len(entries)} nodes accept connections: {shown}", data=data
        )
    return max(0.2, timeout - seconds)


def _handshake(
    res: NetworkResult, target: BrokerUrl, budget: float, timeout: float, on_tcp: Callable[[bool], None] | None
) -> bool:
    """Check 3 over plain AMQP (raw bytes, no pika): does an AMQP server greet us?"""
    from celeryctl.probe import amqp_handshake

    handshake = amqp_handshake(target.host, target.port, budget)
    if on_tcp is not None:
        on_tcp(handshake.ok)
    if not handshake.ok:
        hint = (
            "the port answers TCP but not AMQP within the timeout: is it the AMQP port (5672)? "
            "is the broker still booting or overloaded?"
            if handshake.kind == "timeout"
            else "is it the AMQP port? (the management UI is on 15672, AMQP on 5672)"
        )
        error = handshake.error or "no AMQP"
        if handshake.kind == "timeout":
            error = f"{target.host}:{target.port} accepted TCP but sent no AMQP greeting within {timeout:g} s"
        res.checks["handshake"] = Check("handshake", FAIL, handshake.seconds, error, hint, {"kind": handshake.kind})
        res.skip(("auth", "vhost", "permissions"), "the broker did not complete the AMQP handshake")
        return False
    res.server_product, res.server_version = handshake.product, handshake.version
    res.checks["handshake"] = Check(
        "handshake",
        OK,
        handshake.seconds,
        f"{handshake.product or 'AMQP server'} {handshake.version or ''}".strip(),
        data={"product": handshake.product, "version": handshake.version, "tls": False},
    )
    return True


def _login(res: NetworkResult, target: BrokerUrl, budget: float) -> None:
    """Checks 4-6 from one login; over TLS it also completes check 3."""
    from celeryctl.probe import check_access

    started = time.monotonic()
    access = check_access(target.url, timeout=budget)
    took = time.monotonic() - started
    res.access = access
    connect_s = access.connect_seconds or took
    if access.kind == "blocked":  # the wait was for the blocked publish, not the login
        res.blocked_seconds, connect_s = took, 0.0
    if access.server:
        res.server_product = res.server_product or access.server.get("product")
        res.server_version = res.server_version or access.server.get("version")
    if target.tls and not _tls_handshake(res, access, connect_s):
        return
    if not _auth(res, target, access, connect_s):
        return
    if not _vhost(res, target, access, connect_s):
        return
    res.checks["permissions"] = _permissions(target, access, max(0.0, took - connect_s))


def _tls_handshake(res: NetworkResult, access: AccessReport, seconds: float) -> bool:
    if access.kind in NOT_CONNECTED and not access.server:
        res.checks["handshake"] = Check(
            "handshake", FAIL, seconds, f"TLS/AMQP: {access.error}", "check the TLS port (5671) and certificates"
        )
        res.skip(("auth", "vhost", "permissions"), "the broker did not complete the TLS/AMQP handshake")
        return False
    res.checks["handshake"] = Check(
        "handshake",
        OK,
        seconds,
        f"{res.server_product or 'AMQP server'} {res.server_version or ''} over TLS".strip(),
        data={"product": res.server_product, "version": res.server_version, "tls": True},
    )
    return True


def _auth(res: NetworkResult, target: BrokerUrl, access: AccessReport, seconds: float) -> bool:
    if access.kind == "auth":
        res.checks["auth"] = Check("auth", FAIL, seconds, access.error or "login refused", CREDENTIALS_HINT)
    elif access.kind in NOT_CONNECTED and access.server is None:
        res.checks["auth"] = Check(
            "auth", FAIL, seconds, access.error or "cannot log in", "the broker closed the connection during login"
        )
    else:
        res.checks["auth"] = Check("auth", OK, seconds, f"user '{target.user}' logged in")
        return True
    res.skip(("vhost", "permissions"), "not logged in")
    return False


def _vhost(res: NetworkResult, target: BrokerUrl, access: AccessReport, seconds: float) -> bool:
    user, vhost = target.user, target.vhost
    if access.kind != "vhost":
        res.checks["vhost"] = Check("vhost", OK, 0.0, f"'{vhost}' is open to '{user}'", data={"vhost": vhost})
        return True
    not_found = "does not exist" in (access.error or "")
    hint = (
        f"create it (celeryctl setup-broker, or rabbitmqctl add_vhost {vhost}), or fix the vhost in the broker URL"
        if not_found
        else f"grant access: rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*' (or celeryctl setup-broker)"
    )
    res.checks["vhost"] = Check("vhost", FAIL, seconds, access.error or "vhost refused", hint, {"vhost": vhost})
    res.skip(("permissions",), "no access to the virtual host")
    return False


def _permissions(target: BrokerUrl, access: AccessReport, seconds: float) -> Check:
    user, vhost = target.user, target.vhost
    data: dict[str, Any] = {
        "configure": access.configure,
        "write": access.write,
        "read": access.read,
        "missing": access.missing,
    }
    if access.kind == "blocked":
        return skip("permissions", "the broker blocked the connection (see resource alarms)")
    if access.kind == "permissions":
        return Check(
            "permissions",
            FAIL,
            seconds,
            f"missing {' and '.join(access.missing)} on '{vhost}' "
            f"(configure={access.configure}, write={access.write}, read={access.read})",
            f"grant them: rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*' (or celeryctl setup-broker)",
            data,
        )
    if not access.ok:
        return Check("permissions", FAIL, seconds, access.error or "the test message failed", None, data)
    rt = access.round_trip_ms or 0.0
    data["round_trip_ms"] = round(rt, 2)
    return Check("permissions", OK, seconds, f"configure, write, read ok; round trip {rt:.1f} ms", data=data)
