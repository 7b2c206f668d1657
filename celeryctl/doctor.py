"""``celeryctl doctor``: a fast, complete health check of broker, credentials, app, backend, workers.

Every check returns a :class:`Check` (name, status ``ok``/``warn``/``fail``/``skip``, seconds,
detail, hint, data); this module knows nothing of display.  A check that cannot run because an
earlier one failed is ``skip``, never a second failure.

Speed is part of the job (about a second for a healthy setup), so independent work runs at the
same time: the Celery app is imported in one thread and the local node is asked about alarms
(an Erlang VM boot, ~0.5 s) in another while the network checks run; the worker ping stops as
soon as every consumer of the app's queues has answered instead of always waiting its deadline.
celery, kombu and pika are imported inside the functions that use them.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from celeryctl.broker import BrokerUrl
from celeryctl.errors import CeleryctlError
from celeryctl.settings import Settings, load_settings, mask_url

if TYPE_CHECKING:
    from celery import Celery

    from celeryctl.probe import AccessReport

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

#: The checks, in the order they are reported, with their titles.
TITLES: dict[str, str] = {
    "settings": "settings",
    "tcp": "TCP connection",
    "handshake": "AMQP handshake",
    "auth": "authentication",
    "vhost": "virtual host",
    "permissions": "permissions",
    "alarms": "resource alarms",
    "app": "Celery app",
    "backend": "result backend",
    "workers": "workers",
    "queues": "queue depths",
    "versions": "versions",
    "local_node": "local node",
}

NETWORK_CHECKS = ("tcp", "handshake", "auth", "vhost", "permissions", "alarms")
BROKER_HINT = "start celeryctl's node (celeryctl broker start), or fix host/port in --broker / CELERYCTL_BROKER_URL"
CREDENTIALS_HINT = (
    "check the user and password in the broker URL (--broker / CELERYCTL_BROKER_URL / celeryctl.toml), "
    "or re-run celeryctl setup-broker"
)


@dataclass
class Check:
    """The outcome of one check."""

    name: str
    status: str  # ok | warn | fail | skip
    seconds: float = 0.0
    detail: str = ""
    hint: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return TITLES.get(self.name, self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "seconds": round(self.seconds, 4),
            "detail": self.detail,
            "hint": self.hint,
            "data": self.data,
        }


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

    def get(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def to_dict(self, strict: bool = False) -> dict[str, Any]:
        return {
            "ok": not self.failed(strict),
            "strict": strict,
            "seconds": round(self.seconds, 4),
            "broker_url": self.broker_url,
            "counts": self.counts(),
            "checks": [c.to_dict() for c in self.checks],
        }


def skip(name: str, why: str) -> Check:
    return Check(name, SKIP, 0.0, why)


# --------------------------------------------------------------------------- broker URL


@dataclass
class BrokerTarget:
    url: str
    scheme: str
    host: str
    port: int
    user: str
    vhost: str

    @property
    def masked(self) -> str:
        return mask_url(self.url)

    @property
    def key(self) -> tuple[object, ...]:
        """What makes two URLs the same broker login (``//`` and ``/%2F`` are both vhost ``/``)."""
        parts = urlsplit(self.url)
        return (self.scheme == "amqps", self.host.lower(), self.port, self.user, parts.password, self.vhost)

    @property
    def is_local(self) -> bool:
        host = self.host.lower()
        return host in ("localhost", "::1", "ip6-localhost", socket.gethostname().lower()) or host.startswith("127.")


def parse_broker(url: str) -> BrokerTarget:
    """Split an AMQP URL the way kombu reads it (``//`` is vhost ``/``); ValueError when it won't parse."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in ("amqp", "amqps", "pyamqp"):
        raise ValueError(f"scheme '{scheme or '(none)'}' is not AMQP (amqp:// or amqps://)")
    if not parts.hostname:
        raise ValueError("no host")
    port = parts.port or (5671 if scheme == "amqps" else 5672)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return BrokerTarget(url, scheme, parts.hostname, port, unquote(parts.username or "guest"), vhost)


def first_url(value: Any) -> str | None:
    """The first URL of a broker setting (celery allows a list or ``;``-separated failover URLs)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if not isinstance(value, str) or not value:
        return None
    return value.split(";", 1)[0].strip()


# --------------------------------------------------------------------------- checks 1: settings


def check_settings(
    flags: Mapping[str, Any], config: Path | None, env: Mapping[str, str] | None, cwd: Path | None
) -> tuple[Check, Settings | None, BrokerTarget | None]:

    started = time.monotonic()
    try:
        settings = load_settings(flags, config=config, env=env, cwd=cwd)
        url = settings.broker
        BrokerUrl.parse(url, settings.sources.get("broker_url", ""))
        target = parse_broker(url)
    except CeleryctlError as exc:
        return Check("settings", FAIL, time.monotonic() - started, exc.message, exc.hint), None, None
    except ValueError as exc:
        return (
            Check("settings", FAIL, time.monotonic() - started, f"the broker URL is invalid: {exc}", CREDENTIALS_HINT),
            None,
            None,
        )
    sources = settings.sources
    detail = f"broker {target.masked} ({sources.get('broker_url', 'default')})"
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


def check_network(target: BrokerTarget, timeout: float, on_tcp: Callable[[bool], None] | None = None) -> NetworkResult:
    """TCP, handshake, authentication, virtual host and permissions (one login for the last three).

    ``on_tcp`` is told as soon as it is known whether an AMQP server answers (TCP, then the
    handshake): the local-node check waits for that before it boots an Erlang VM to ask a node.
    """
    from celeryctl.probe import amqp_handshake, tcp_connect

    checks: dict[str, Check] = {}
    res = NetworkResult(checks)
    where = f"{target.host}:{target.port}"

    tcp = tcp_connect(target.host, target.port, timeout)
    if on_tcp is not None and (not tcp.ok or target.scheme == "amqps"):
        on_tcp(tcp.ok)
    if not tcp.ok:
        hint = {
            "dns": "check the host name in the broker URL",
            "timeout": "a firewall may drop the packets, or the host is down; check host and port",
        }.get(tcp.kind or "", BROKER_HINT)
        checks["tcp"] = Check("tcp", FAIL, tcp.seconds, tcp.error or "cannot connect", hint, {"kind": tcp.kind})
        for name in ("handshake", "auth", "vhost", "permissions"):
            checks[name] = skip(name, f"no TCP connection to {where}")
        return res
    checks["tcp"] = Check(
        "tcp", OK, tcp.seconds, f"{where} accepts connections ({tcp.address})", data={"address": tcp.address}
    )

    # TCP and handshake share the timeout: a port that never answers costs `timeout`, no more.
    budget = max(0.2, timeout - tcp.seconds)
    if target.scheme == "amqps":
        handshake = None  # the TLS handshake is done by pika below
    else:
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
                error = f"{where} accepted TCP but sent no AMQP greeting within {timeout:g} s"
            checks["handshake"] = Check("handshake", FAIL, handshake.seconds, error, hint, {"kind": handshake.kind})
            for name in ("auth", "vhost", "permissions"):
                checks[name] = skip(name, "the broker did not complete the AMQP handshake")
            return res
        res.server_product, res.server_version = handshake.product, handshake.version
        checks["handshake"] = Check(
            "handshake",
            OK,
            handshake.seconds,
            f"{handshake.product or 'AMQP server'} {handshake.version or ''}".strip(),
            data={"product": handshake.product, "version": handshake.version, "tls": False},
        )

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
    logged_in = access.server is not None
    if target.scheme == "amqps":
        if access.kind in ("refused", "timeout", "dns", "closed") and not access.server:
            checks["handshake"] = Check(
                "handshake", FAIL, connect_s, f"TLS/AMQP: {access.error}", "check the TLS port (5671) and certificates"
            )
            for name in ("auth", "vhost", "permissions"):
                checks[name] = skip(name, "the broker did not complete the TLS/AMQP handshake")
            return res
        checks["handshake"] = Check(
            "handshake",
            OK,
            connect_s,
            f"{res.server_product or 'AMQP server'} {res.server_version or ''} over TLS".strip(),
            data={"product": res.server_product, "version": res.server_version, "tls": True},
        )

    user, vhost = target.user, target.vhost
    if access.kind == "auth":
        checks["auth"] = Check("auth", FAIL, connect_s, access.error or "login refused", CREDENTIALS_HINT)
        checks["vhost"] = skip("vhost", "not logged in")
        checks["permissions"] = skip("permissions", "not logged in")
        return res
    if access.kind in ("refused", "timeout", "dns", "closed") and not logged_in:
        checks["auth"] = Check(
            "auth", FAIL, connect_s, access.error or "cannot log in", "the broker closed the connection during login"
        )
        checks["vhost"] = skip("vhost", "not logged in")
        checks["permissions"] = skip("permissions", "not logged in")
        return res
    checks["auth"] = Check("auth", OK, connect_s, f"user '{user}' logged in")
    if access.kind == "vhost":
        not_found = "does not exist" in (access.error or "")
        hint = (
            f"create it (celeryctl setup-broker, or rabbitmqctl add_vhost {vhost}), or fix the vhost in the broker URL"
            if not_found
            else f"grant access: rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*' (or celeryctl setup-broker)"
        )
        checks["vhost"] = Check("vhost", FAIL, connect_s, access.error or "vhost refused", hint, {"vhost": vhost})
        checks["permissions"] = skip("permissions", "no access to the virtual host")
        return res
    checks["vhost"] = Check("vhost", OK, 0.0, f"'{vhost}' is open to '{user}'", data={"vhost": vhost})
    perm_data: dict[str, Any] = {
        "configure": access.configure,
        "write": access.write,
        "read": access.read,
        "missing": access.missing,
    }
    perm_s = max(0.0, took - connect_s)
    if access.kind == "blocked":
        checks["permissions"] = skip("permissions", "the broker blocked the connection (see resource alarms)")
    elif access.kind == "permissions":
        checks["permissions"] = Check(
            "permissions",
            FAIL,
            perm_s,
            f"missing {' and '.join(access.missing)} on '{vhost}' (configure={access.configure}, write={access.write}, read={access.read})",
            f"grant them: rabbitmqctl set_permissions -p {vhost} {user} '.*' '.*' '.*' (or celeryctl setup-broker)",
            perm_data,
        )
    elif not access.ok:
        checks["permissions"] = Check(
            "permissions", FAIL, perm_s, access.error or "the test message failed", None, perm_data
        )
    else:
        rt = access.round_trip_ms or 0.0
        perm_data["round_trip_ms"] = round(rt, 2)
        checks["permissions"] = Check(
            "permissions", OK, perm_s, f"configure, write, read ok; round trip {rt:.1f} ms", data=perm_data
        )
    return res


# --------------------------------------------------------------------------- check 13 (+7): the local node


@dataclass
class LocalResult:
    check: Check
    alarms: list[Any] | None = None  # None: not asked
    alarms_error: str | None = None


def check_local_node(
    settings: Settings, target: BrokerTarget, tcp_ready: threading.Event, tcp_ok: list[bool], timeout: float
) -> LocalResult:
    """rabbitmqctl present, the node running, and its alarms (rabbitmq-diagnostics)."""
    from celeryctl.rabbitmq.ctl import Runner, find_bin_dir, installed_version
    from celeryctl.rabbitmq.node import Node

    started = time.monotonic()

    def done(status: str, detail: str, hint: str | None = None, **data: Any) -> Check:
        return Check("local_node", status, time.monotonic() - started, detail, hint, data)

    if not target.is_local:
        return LocalResult(skip("local_node", f"the broker ({target.host}) is not on this machine"))
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return LocalResult(
            done(WARN, "rabbitmqctl is not installed here", "install RabbitMQ's tools: celeryctl broker install")
        )
    version = installed_version(bin_dir)
    tools = f"rabbitmqctl {version or ''} in {bin_dir}".replace("  ", " ")
    node = Node(settings.data_dir / "node", bin_dir=bin_dir)
    state = node.read_state()
    runner: Runner
    if state is not None and state.port == target.port:
        info = node.running_info()
        if info is None:
            return LocalResult(
                done(
                    FAIL,
                    f"{tools}; celeryctl's node {state.name} ({node.dir}) is not running",
                    "start it: celeryctl broker start",
                    node=state.name,
                    running=False,
                    data_dir=str(node.dir),
                )
            )
        runner = node.runner(info)
        who = f"celeryctl's node {info.name} (pid {info.pid})"
        data: dict[str, Any] = {"node": info.name, "pid": info.pid, "celeryctl_node": True, "bin_dir": str(bin_dir)}
    else:
        tcp_ready.wait(timeout + 1.0)
        if not (tcp_ok and tcp_ok[0]):
            return LocalResult(
                done(
                    SKIP,
                    f"{tools}; no AMQP server answers on port {target.port} (celeryctl's node in {node.dir} is not on it)",
                    node=settings.node,
                    running=False,
                )
            )
        runner = Runner(bin_dir=bin_dir, node=settings.node, timeout=max(1.0, timeout))
        who = f"node {settings.node or '(system default)'}"
        data = {"node": settings.node, "celeryctl_node": False, "bin_dir": str(bin_dir)}
    try:
        doc = runner.json("-q", "alarms", tool="rabbitmq-diagnostics", timeout=max(1.5, timeout))
    except CeleryctlError as exc:
        data["error"] = exc.message
        if data.get("celeryctl_node"):
            return LocalResult(done(FAIL, f"{tools}; {who} does not answer: {exc.message}", exc.hint, **data))
        # A system node we may not talk to (its cookie belongs to another user), or a broker in a
        # container: AMQP works, so this is not a fault of the setup, only a limit of what doctor sees.
        why = {
            "PermissionDeniedError": "its Erlang cookie is not ours (run doctor as the node's user to ask it)",
            "UnreachableError": "no node of that name runs here (a container, or another tool's node?)",
        }.get(type(exc).__name__, exc.message)
        name = settings.node or "rabbit@" + socket.gethostname().split(".")[0]
        return LocalResult(
            done(OK, f"{tools}; port {target.port} accepts TCP; rabbitmq-diagnostics cannot ask {name}: {why}", **data),
            alarms_error=exc.message,
        )
    if isinstance(doc, dict):  # 3.10: {"local": [...], "global": [...]}; others: {"alarms": [...]}
        alarms = list(doc.get("local") or []) + list(doc.get("global") or []) + list(doc.get("alarms") or [])
    else:
        alarms = list(doc or [])
    data["alarms"] = alarms
    return LocalResult(done(OK, f"{tools}; {who} is running", **data), alarms=list(alarms or []))


def alarms_check(net: NetworkResult | None, local: LocalResult | None) -> Check:
    """Check 7: a blocked connection fails; on a local node rabbitmq-diagnostics is asked too."""
    access = net.access if net else None
    if access is None:
        return skip("alarms", "not connected to the broker")
    if access.kind == "blocked" or access.blocked:
        named = f" ({', '.join(_alarm_name(a) for a in local.alarms)})" if local is not None and local.alarms else ""
        return Check(
            "alarms",
            FAIL,
            net.blocked_seconds if net else 0.0,
            f"the broker blocked the connection: a memory or disk alarm is on, publishing stops{named}",
            "free disk space or memory on the broker host (rabbitmq-diagnostics alarms shows which)",
            {"blocked": True, "alarms": local.alarms if local else None},
        )
    if local is not None and local.alarms:
        names = ", ".join(_alarm_name(a) for a in local.alarms)
        return Check(
            "alarms",
            FAIL,
            local.check.seconds,
            f"the node reports alarms: {names}",
            "free disk space or memory on the broker host; publishers are blocked until it clears",
            {"blocked": False, "alarms": local.alarms},
        )
    if access.kind not in (None, "permissions") and not access.ok:
        return skip("alarms", "not logged in")
    asked = local is not None and local.alarms is not None
    detail = "no alarms (node asked)" if asked else "connection not blocked"
    if local is not None and local.alarms_error:
        detail += " (rabbitmq-diagnostics could not ask the node)"
    return Check(
        "alarms",
        OK,
        local.check.seconds if asked and local else 0.0,
        detail,
        data={"blocked": False, "alarms": local.alarms if local else None},
    )


def _alarm_name(alarm: Any) -> str:
    if isinstance(alarm, dict):
        return str(alarm.get("resource") or alarm.get("type") or alarm)
    return str(alarm)


# --------------------------------------------------------------------------- check 8: the app


@dataclass
class AppResult:
    check: Check
    app: Celery | None = None
    queues: list[str] = field(default_factory=list)


def app_queue_names(app: Celery) -> list[str]:
    """The queues the app routes to: the default queue, task_queues, task_routes, task options."""
    conf = app.conf
    names: list[str] = [conf.task_default_queue or "celery"]

    def add(value: Any) -> None:
        if isinstance(value, str):
            names.append(value)
        elif getattr(value, "name", None):
            names.append(str(value.name))
        elif isinstance(value, dict):
            add(value.get("queue"))

    for queue in conf.task_queues or ():
        add(queue)
    routes = conf.task_routes
    for mapping in routes if isinstance(routes, (list, tuple)) else [routes]:
        if isinstance(mapping, dict):
            for value in mapping.values():
                add(value)
    for task in list(app.tasks.values()):
        add(getattr(task, "queue", None))
    return list(dict.fromkeys(n for n in names if n))


def check_app(settings: Settings) -> AppResult:
    from celeryctl.celeryapp import DEMO_APP, load_app

    started = time.monotonic()
    spec = settings.app
    try:
        app = load_app(spec, settings)
        try:
            app.loader.import_default_modules()
        except Exception as exc:  # noqa: BLE001 - the user's task modules failing to import
            return AppResult(
                Check(
                    "app",
                    FAIL,
                    time.monotonic() - started,
                    f"the task modules of '{app.main}' do not import: {type(exc).__name__}: {exc}",
                    "fix the import error (CELERYCTL_DEBUG=1 celeryctl worker shows the traceback)",
                )
            )
        tasks = sorted(n for n in app.tasks if not n.startswith("celery."))
        queues = app_queue_names(app)
    except CeleryctlError as exc:
        return AppResult(Check("app", FAIL, time.monotonic() - started, exc.message, exc.hint))
    except Exception as exc:  # noqa: BLE001 - any failure of the user's app is reported, not raised
        return AppResult(
            Check(
                "app",
                FAIL,
                time.monotonic() - started,
                f"the app does not load: {type(exc).__name__}: {exc}",
                "fix the app module; -A MODULE[:ATTRIBUTE] or CELERYCTL_APP names it",
            )
        )
    label = spec or f"{DEMO_APP} (built-in demo)"
    data = {
        "spec": spec or DEMO_APP,
        "main": app.main,
        "tasks": tasks,
        "queues": queues,
        "broker_url": mask_url(first_url(app.conf.broker_url) or ""),
        "result_backend": mask_url(str(app.conf.result_backend or "")),
    }
    if not tasks:
        return AppResult(
            Check(
                "app",
                WARN,
                time.monotonic() - started,
                f"{label} loads but registers no tasks",
                "import the task modules from the app module, or list them in include=...",
                data,
            ),
            app,
            queues,
        )
    detail = f"{label}: {len(tasks)} task{'s' if len(tasks) != 1 else ''}; queues {', '.join(queues)}"
    return AppResult(Check("app", OK, time.monotonic() - started, detail, data=data), app, queues)


# --------------------------------------------------------------------------- checks 9-11 through kombu


@dataclass
class QueueDepth:
    name: str
    exists: bool
    messages: int = 0
    consumers: int = 0


def queue_depths(conn: Any, names: list[str]) -> list[QueueDepth]:
    """Passive declares (no permission needed): message and consumer counts, without changing anything."""
    depths: list[QueueDepth] = []
    chan = conn.channel()
    try:
        for name in names:
            try:
                ok = chan.queue_declare(queue=name, passive=True)
                depths.append(QueueDepth(name, True, int(ok.message_count), int(ok.consumer_count)))
            except Exception as exc:  # 404 closes the channel; take a new one
                if getattr(exc, "code", getattr(exc, "reply_code", None)) != 404:
                    raise
                depths.append(QueueDepth(name, False))
                chan = conn.channel()
    finally:
        try:
            chan.close()
        except Exception:  # noqa: BLE001 - closing a dead channel
            pass
    return depths


def check_queues(depths: list[QueueDepth], seconds: float) -> Check:
    data = {"queues": [d.__dict__ for d in depths]}
    stuck = [d for d in depths if d.messages and not d.consumers]
    parts = []
    for d in depths:
        if not d.exists:
            parts.append(f"{d.name}: not declared yet")
        else:
            parts.append(f"{d.name}: {d.messages} msg, {d.consumers} consumer{'s' if d.consumers != 1 else ''}")
    detail = "; ".join(parts) or "no queues"
    if stuck:
        names = ", ".join(f"'{d.name}' ({d.messages})" for d in stuck)
        return Check(
            "queues",
            WARN,
            seconds,
            f"messages wait with no consumer: {names}; {detail}",
            f"start a worker on it: celeryctl worker -Q {','.join(d.name for d in stuck)}",
            data,
        )
    return Check("queues", OK, seconds, detail, data=data)


def check_backend(app: Celery, conn: Any, timeout: float) -> Check:
    """Check 9: the result backend answers; for rpc:// a message goes the way a result would."""
    started = time.monotonic()
    url = mask_url(str(app.conf.result_backend or ""))
    try:
        backend = app.backend
    except Exception as exc:  # noqa: BLE001 - e.g. redis:// without the redis package
        return Check(
            "backend",
            FAIL,
            time.monotonic() - started,
            f"result backend {url} cannot be set up: {type(exc).__name__}: {exc}",
            "install its client package, or use --backend rpc://",
        )
    kind = type(backend).__name__
    data: dict[str, Any] = {"url": url, "backend": kind}
    if kind == "DisabledBackend":
        return Check("backend", OK, time.monotonic() - started, "disabled: results are not stored", data=data)
    if kind == "RPCBackend":
        return _rpc_round_trip(backend, conn, timeout, started, data)
    # Any other store: ask it for an unknown task's state (one read, no write).
    import uuid

    box: list[Any] = []

    def ask() -> None:
        try:
            box.append(backend.get_task_meta(f"celeryctl-doctor-{uuid.uuid4().hex}"))
        except Exception as exc:  # noqa: BLE001 - reported below
            box.append(exc)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        return Check(
            "backend", FAIL, time.monotonic() - started, f"{url} did not answer within {timeout:g} s", None, data
        )
    if isinstance(box[0], Exception):
        error = box[0]
        return Check(
            "backend",
            FAIL,
            time.monotonic() - started,
            f"{url}: {type(error).__name__}: {error}",
            "check the result backend URL (--backend / CELERYCTL_RESULT_BACKEND) and that the store runs",
            data,
        )
    return Check("backend", OK, time.monotonic() - started, f"{kind} {url} answers", data=data)


def _rpc_round_trip(backend: Any, conn: Any, timeout: float, started: float, data: dict[str, Any]) -> Check:
    import uuid

    from kombu import Consumer, Producer

    token = uuid.uuid4().hex
    got: list[Any] = []
    chan = conn.channel()
    try:
        queue = backend.binding
        consumer = Consumer(
            chan, [queue], no_ack=True, accept=["json"], callbacks=[lambda body, _msg: got.append(body)]
        )
        with consumer:  # declares the app's reply queue (auto-delete: gone when we cancel)
            Producer(chan, auto_declare=False).publish(
                {"celeryctl_doctor": token}, exchange="", routing_key=backend.oid, serializer="json", delivery_mode=1
            )
            deadline = time.monotonic() + timeout
            while not got and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=max(0.01, deadline - time.monotonic()))
                except TimeoutError:
                    break
    except Exception as exc:  # noqa: BLE001 - permission or channel errors
        return Check(
            "backend",
            FAIL,
            time.monotonic() - started,
            f"rpc:// reply path failed: {type(exc).__name__}: {exc}",
            "the user needs configure/write/read on its reply queues (names are UUIDs): grant '.*'",
            data,
        )
    finally:
        try:
            chan.close()
        except Exception:  # noqa: BLE001
            pass
    took = time.monotonic() - started
    if not got:
        return Check("backend", FAIL, took, f"rpc:// reply did not come back within {timeout:g} s", None, data)
    data["round_trip_ms"] = round(took * 1000, 2)
    return Check("backend", OK, took, f"rpc:// reply path works ({took * 1000:.1f} ms)", data=data)


def ping_workers(
    app: Celery, conn: Any, deadline_s: float, need: Mapping[str, int]
) -> tuple[dict[str, list[str]], float]:
    """Broadcast ``active_queues`` and collect replies until every consumer counted in ``need`` answered.

    ``need`` maps queue name -> consumer count seen on it: a reply from each of them is enough,
    so a healthy setup does not wait out the whole deadline.  Returns (worker -> queues, seconds).
    """
    import uuid

    from kombu import Consumer, Producer

    started = time.monotonic()
    mailbox = app.control.mailbox(conn)
    chan = conn.channel()
    ticket = uuid.uuid4().hex
    workers: dict[str, list[str]] = {}

    def on_message(body: Any, message: Any) -> None:
        if message.headers.get("ticket") != ticket or not isinstance(body, dict):
            return
        for hostname, queues in body.items():
            workers[str(hostname)] = [str(q.get("name")) for q in queues or [] if isinstance(q, dict)]

    def covered() -> bool:
        if not workers or not any(need.values()):
            return False
        for queue, count in need.items():
            if sum(1 for qs in workers.values() if queue in qs) < count:
                return False
        return True

    try:
        consumer = Consumer(chan, [mailbox.reply_queue], no_ack=True, accept=mailbox.accept, callbacks=[on_message])
        with consumer:
            mailbox._publish(  # kombu's own broadcast, with our producer and channel
                "active_queues",
                {},
                reply_ticket=ticket,
                channel=chan,
                timeout=deadline_s,
                producer=Producer(chan, auto_declare=False),
            )
            deadline = started + deadline_s
            while not covered():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    conn.drain_events(timeout=remaining)
                except TimeoutError:
                    break
    finally:
        try:
            chan.close()
        except Exception:  # noqa: BLE001
            pass
    return workers, time.monotonic() - started


def check_workers(
    workers: dict[str, list[str]], seconds: float, app_queues: list[str], depths: list[QueueDepth], ping_timeout: float
) -> Check:
    data = {"workers": [{"name": n, "queues": q} for n, q in sorted(workers.items())], "app_queues": app_queues}
    if not workers:
        consumed = [d.name for d in depths if d.consumers]
        extra = f" (but {', '.join(consumed)} has consumers: a worker busy or not answering?)" if consumed else ""
        return Check(
            "workers",
            WARN,
            seconds,
            f"no worker answered within {ping_timeout:g} s{extra}",
            f"start one: celeryctl worker (queues: {','.join(app_queues)}); tasks wait in the queue until then",
            data,
        )
    served = {q for qs in workers.values() for q in qs}
    orphans = [q for q in app_queues if q not in served]
    names = ", ".join(f"{n} ({','.join(q)})" for n, q in sorted(workers.items()))
    count = f"{len(workers)} worker{'s' if len(workers) != 1 else ''}: {names}"
    if orphans:
        data["unserved_queues"] = orphans
        return Check(
            "workers",
            WARN,
            seconds,
            f"{count}; no worker consumes {', '.join(orphans)}: tasks routed there wait forever",
            f"start a worker on them: celeryctl worker -Q {','.join(orphans)}",
            data,
        )
    return Check("workers", OK, seconds, count, data=data)


def check_with_app(
    app: Celery, broker_url: str, app_queues: list[str], timeout: float, ping_timeout: float, *, publish: bool = True
) -> dict[str, Check]:
    """Checks 9-11 on one kombu connection to the app's broker.

    ``publish=False`` (the broker blocks publishers: an alarm) runs only the queue depths;
    the backend and worker checks publish, and a blocked publish would wait forever.
    """
    out: dict[str, Check] = {}
    started = time.monotonic()
    try:
        # read/write timeouts: no socket operation may outwait the budget (a blocked
        # connection stops being read by the broker).
        transport = {"read_timeout": timeout + ping_timeout, "write_timeout": timeout}
        conn = app.connection_for_write(broker_url, connect_timeout=timeout, transport_options=transport)
        conn.connect()
    except Exception as exc:  # noqa: BLE001 - kombu raises many kinds
        detail = f"the app cannot connect to {mask_url(broker_url)}: {type(exc).__name__}: {exc}"
        for name in ("backend", "workers", "queues"):
            out[name] = Check(name, FAIL, time.monotonic() - started, detail, "check the app's broker settings")
        return out
    try:
        t0 = time.monotonic()
        try:
            depths = queue_depths(conn, app_queues)
            out["queues"] = check_queues(depths, time.monotonic() - t0)
        except Exception as exc:  # noqa: BLE001
            depths = []
            out["queues"] = Check("queues", FAIL, time.monotonic() - t0, f"{type(exc).__name__}: {exc}")
        if not publish:
            why = "the broker blocks publishing (see resource alarms)"
            out["backend"], out["workers"] = skip("backend", why), skip("workers", why)
            return out
        out["backend"] = check_backend(app, conn, timeout)
        try:
            need = {d.name: d.consumers for d in depths}
            workers, took = ping_workers(app, conn, ping_timeout, need)
            out["workers"] = check_workers(workers, took, app_queues, depths, ping_timeout)
        except Exception as exc:  # noqa: BLE001
            out["workers"] = Check(
                "workers",
                FAIL,
                time.monotonic() - t0,
                f"the ping could not be sent: {type(exc).__name__}: {exc}",
                "the user needs configure/write/read on celery.pidbox and its reply queues",
            )
    finally:
        try:
            conn.release()
        except Exception:  # noqa: BLE001
            pass
    return out


# --------------------------------------------------------------------------- check 12: versions


def _vt(version: str | None) -> tuple[int, ...]:
    out: list[int] = []
    for part in (version or "").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def version_problems(
    celery_v: str | None, kombu_v: str | None, server_v: str | None, python: tuple[int, int]
) -> tuple[list[str], list[str]]:
    """(warnings, notes) for known-bad combinations; a small table, not an exhaustive one."""
    warns: list[str] = []
    notes: list[str] = []
    c, k, s = _vt(celery_v), _vt(kombu_v), _vt(server_v)
    if c and k and c[:1] == (5,) and c >= (5, 3) and k[:2] < c[:2]:
        warns.append(
            f"kombu {kombu_v} is older than celery {celery_v} expects (kombu {c[0]}.{c[1]}): pip install -U kombu"
        )
    if c and c < (5, 3) and python >= (3, 12):
        warns.append(f"celery {celery_v} does not support Python {python[0]}.{python[1]}: pip install -U celery")
    if s and s < (3, 8):
        warns.append(f"RabbitMQ {server_v} is out of support (no quorum queues): upgrade to 3.13 or later")
    if s and s >= (3, 8, 15):
        notes.append(
            "RabbitMQ closes a channel whose message stays unacknowledged longer than consumer_timeout "
            "(30 min by default): tasks with a longer ETA/countdown, or long tasks with acks_late, need it raised"
        )
    if s and s >= (4, 0):
        notes.append(
            "RabbitMQ 4 deprecates transient non-exclusive queues (celery's pidbox and rpc:// reply queues use them)"
        )
    return warns, notes


def check_versions(server_product: str | None, server_v: str | None) -> Check:
    started = time.monotonic()
    from importlib import metadata

    def ver(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    found = {name: ver(name) for name in ("celery", "kombu", "amqp", "pika")}
    py = sys.version_info[:2]
    warns, notes = version_problems(found["celery"], found["kombu"], server_v, (py[0], py[1]))
    data: dict[str, Any] = {
        **found,
        "server": server_v,
        "server_product": server_product,
        "python": sys.version.split()[0],
    }
    data["notes"] = notes
    shown = ", ".join(f"{n} {v}" for n, v in found.items() if v)
    server = f"{server_product or 'RabbitMQ'} {server_v}" if server_v else "server unknown"
    detail = f"{shown}; {server}"
    if warns:
        return Check("versions", WARN, time.monotonic() - started, f"{detail}; " + "; ".join(warns), warns[0], data)
    return Check("versions", OK, time.monotonic() - started, detail, data=data)


# --------------------------------------------------------------------------- the whole run


def run_doctor(
    flags: Mapping[str, Any] | None = None,
    *,
    config: Path | None = None,
    timeout: float = 2.0,
    ping_timeout: float = 1.0,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> DoctorReport:
    """Run every check and return them in the documented order."""
    say = on_progress or (lambda _msg: None)
    started = time.monotonic()
    results: dict[str, Check] = {}
    settings_check, settings, target = check_settings(flags or {}, config, env, cwd)
    results["settings"] = settings_check
    if settings is None or target is None:
        for name in TITLES:
            if name not in ("settings", "versions"):
                results[name] = skip(name, "the settings do not resolve")
        results["versions"] = check_versions(None, None)
        return _report(results, started, None)

    tcp_ready = threading.Event()
    tcp_ok: list[bool] = []
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="doctor")
    try:
        app_future: Future[AppResult] = pool.submit(check_app, settings)
        local_future: Future[LocalResult] = pool.submit(check_local_node, settings, target, tcp_ready, tcp_ok, timeout)
        say(f"checking the broker at {target.masked}")

        def on_tcp(ok: bool) -> None:
            tcp_ok.append(ok)
            tcp_ready.set()

        try:
            net = check_network(target, timeout, on_tcp)
        finally:
            tcp_ready.set()  # never leave the local check waiting
        say("loading the Celery app")
        app_result = app_future.result()
        app = app_result.app
        # The app may name its own broker (celery's `broker=`), which is the one its workers use.
        app_url = first_url(app.conf.broker_url) if app is not None else None
        if app_url and app_url != target.url:
            try:
                app_target: BrokerTarget | None = parse_broker(app_url)
            except ValueError as exc:
                settings_check.status = FAIL
                settings_check.detail = f"the app's own broker URL is not AMQP: {exc}"
                app_target = None
            if app_target is not None and app_target.key != target.key:
                settings_check.detail += f"; the app sets its own broker {app_target.masked}: checked that one"
                settings_check.data["app_broker_url"] = app_target.masked
                target = app_target
                tcp_ready, tcp_ok = threading.Event(), []
                # The first local check was about the other broker: its answer is dropped.
                local_future = pool.submit(check_local_node, settings, target, tcp_ready, tcp_ok, timeout)
                try:
                    net = check_network(target, timeout, on_tcp)
                finally:
                    tcp_ready.set()
        results.update(net.checks)
        results["app"] = app_result.check
        say("asking the workers")
        network_ok = all(net.checks[n].status == OK for n in ("tcp", "handshake", "auth", "vhost"))
        if app is None:
            for name in ("backend", "workers", "queues"):
                results[name] = skip(name, "the app did not load")
        elif not network_ok:
            for name in ("backend", "workers", "queues"):
                results[name] = skip(name, "the broker is not usable (see above)")
        else:
            blocked = net.access is not None and net.access.kind == "blocked"
            extra = check_with_app(app, target.url, app_result.queues, timeout, ping_timeout, publish=not blocked)
            perms = net.checks.get("permissions")
            if perms is not None and perms.status == FAIL:
                # Same cause as the permissions failure: do not report it twice.
                for name in ("backend", "workers"):
                    if extra[name].status == FAIL:
                        extra[name] = skip(name, "missing permissions (see above)")
            results.update(extra)
        say("asking the local node")
        local = local_future.result()
    finally:
        pool.shutdown(wait=True)
    results["local_node"] = local.check
    results["alarms"] = alarms_check(net, local if target.is_local else None)
    if results["tcp"].status != OK or results["handshake"].status != OK:
        results["alarms"] = skip("alarms", "not connected to the broker")
    results["versions"] = check_versions(net.server_product, net.server_version)
    return _report(results, started, target.masked)


def _report(results: dict[str, Check], started: float, broker: str | None) -> DoctorReport:
    checks = [results.get(name) or skip(name, "not run") for name in TITLES]
    return DoctorReport(checks, time.monotonic() - started, broker)
