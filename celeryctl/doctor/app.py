"""Checks 8-11: the Celery app, then through the app's own kombu connection the result backend,
the workers (a ping) and the depths of the app's queues.

The worker ping stops as soon as every consumer of the app's queues has answered instead of
always waiting out its deadline.  celery and kombu are imported inside the functions.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeryctl.broker import (
    BrokerUrl,
    QueueDepth,
    app_queue_names,
    close_quietly,
    first_url,
    mask_url,
    queue_depths,
)
from celeryctl.doctor.check import FAIL, OK, WARN, Check, skip
from celeryctl.errors import CeleryctlError, ConfigError

if TYPE_CHECKING:
    from celery import Celery

    from celeryctl.settings import Settings


def broker_errors() -> tuple[type[BaseException], ...]:
    """What talking to the broker through kombu raises: kombu's own errors, py-amqp's connection
    and channel errors (a refused login or a 403 on a queue is ``amqp.AccessRefused``), and
    socket errors and timeouts (``OSError``)."""
    from amqp.exceptions import AMQPError
    from kombu.exceptions import OperationalError

    return (OperationalError, AMQPError, OSError)


# --------------------------------------------------------------------------- which broker


def app_may_name_its_broker(settings: Settings) -> bool:
    """Can the app's workers use another broker than the settings'?

    The rule of :func:`celeryctl.celeryapp.load_app`: a broker from a flag or the environment
    overrides the app's own; otherwise a user's app (``-A``) keeps the broker it sets (the
    built-in demo app sets none).  Celery itself lets ``CELERY_BROKER_URL`` win over any app.
    """
    from celeryctl.celeryapp import explicit_keys

    if os.environ.get("CELERY_BROKER_URL"):
        return True
    return settings.app is not None and "broker_url" not in explicit_keys(settings)


def app_broker(settings_check: Check, target: BrokerUrl, app: Celery | None) -> BrokerUrl:
    """The broker the app's workers use (its ``broker_url`` once loaded); the settings' when the
    app names none, the same one, or one that is not AMQP (then the settings check fails)."""
    value = app.conf.broker_url if app is not None else None
    if not value:
        return target
    try:
        own = BrokerUrl.parse(value)
    except ConfigError as exc:
        settings_check.status = FAIL
        settings_check.detail = f"the app's own {exc.message}"
        return target
    if own.key == target.key:
        return target
    settings_check.detail += f"; the app sets its own broker {own.masked}: checked that one"
    settings_check.data["app_broker_url"] = own.masked
    return own


# --------------------------------------------------------------------------- check 8: the app


@dataclass
class AppResult:
    check: Check
    app: Celery | None = None
    queues: list[str] = field(default_factory=list)


def check_app(settings: Settings) -> AppResult:
    """Load the app (``-A``, else the demo app), import its task modules, list tasks and queues."""
    from celeryctl.celeryapp import DEMO_APP, load_app

    started = time.monotonic()
    spec = settings.app

    def failed(detail: str, hint: str | None) -> AppResult:
        return AppResult(Check("app", FAIL, time.monotonic() - started, detail, hint))

    try:
        app = load_app(spec, settings)
        try:
            app.loader.import_default_modules()
        except Exception as exc:  # noqa: BLE001 - user code: the app's task modules may raise anything
            return failed(
                f"the task modules of '{app.main}' do not import: {type(exc).__name__}: {exc}",
                "fix the import error (CELERYCTL_DEBUG=1 celeryctl worker shows the traceback)",
            )
        # Reading the tasks finalizes the app and its configuration: the user's code runs here too.
        tasks = sorted(n for n in app.tasks if not n.startswith("celery."))
        conf = {"broker_url": app.conf.broker_url, "result_backend": app.conf.result_backend}
    except CeleryctlError as exc:
        return failed(exc.message, exc.hint)
    except Exception as exc:  # noqa: BLE001 - user code: the app module and its configuration may raise anything
        return failed(
            f"the app does not load: {type(exc).__name__}: {exc}",
            "fix the app module; -A MODULE[:ATTRIBUTE] or CELERYCTL_APP names it",
        )
    queues = app_queue_names(app)
    label = spec or f"{DEMO_APP} (built-in demo)"
    data = {
        "spec": spec or DEMO_APP,
        "main": app.main,
        "tasks": tasks,
        "queues": queues,
        "broker_url": mask_url(first_url(conf["broker_url"]) or ""),
        "result_backend": mask_url(str(conf["result_backend"] or "")),
    }
    if not tasks:
        detail, hint = (
            f"{label} loads but registers no tasks",
            "import the task modules from the app module, or list them in include=...",
        )
        return AppResult(Check("app", WARN, time.monotonic() - started, detail, hint, data), app, queues)
    detail = f"{label}: {len(tasks)} task{'s' if len(tasks) != 1 else ''}; queues {', '.join(queues)}"
    return AppResult(Check("app", OK, time.monotonic() - started, detail, data=data), app, queues)


# --------------------------------------------------------------------------- checks 9-11 through kombu


def check_with_app(
    app: Celery, broker_url: str, app_queues: list[str], timeout: float, ping_timeout: float, *, publish: bool = True
) -> dict[str, Check]:
    """Checks 9-11 on one kombu connection to the app's broker.

    ``publish=False`` (the broker blocks publishers: an alarm) runs only the queue depths;
    the backend and worker checks publish, and a blocked publish would wait forever.
    """
    started = time.monotonic()
    try:
        # read/write timeouts: no socket operation may outwait the budget (a blocked
        # connection stops being read by the broker).
        transport = {"read_timeout": timeout + ping_timeout, "write_timeout": timeout}
        conn = app.connection_for_write(broker_url, connect_timeout=timeout, transport_options=transport)
        conn.connect()
    except broker_errors() as exc:
        detail = f"the app cannot connect to {mask_url(broker_url)}: {type(exc).__name__}: {exc}"
        return {
            name: Check(name, FAIL, time.monotonic() - started, detail, "check the app's broker settings")
            for name in ("backend", "workers", "queues")
        }
    out: dict[str, Check] = {}
    try:
        out["queues"], depths = _queues(conn, app_queues)
        if not publish:
            why = "the broker blocks publishing (see resource alarms)"
            out["backend"], out["workers"] = skip("backend", why), skip("workers", why)
            return out
        out["backend"] = check_backend(app, conn, timeout)
        out["workers"] = _workers(app, conn, app_queues, depths, ping_timeout)
    finally:
        close_quietly(conn)
    return out


def _queues(conn: Any, app_queues: list[str]) -> tuple[Check, list[QueueDepth]]:
    started = time.monotonic()
    # A queue the user may not look at (broker.queue_depths' exit-7 error), or the broker failing.
    expected: tuple[type[BaseException], ...] = (CeleryctlError, *broker_errors())
    try:
        depths = queue_depths(conn, app_queues)
    except expected as exc:
        message = exc.message if isinstance(exc, CeleryctlError) else f"{type(exc).__name__}: {exc}"
        return Check("queues", FAIL, time.monotonic() - started, message), []
    return check_queues(depths, time.monotonic() - started), depths


def check_queues(depths: list[QueueDepth], seconds: float) -> Check:
    """Check 11: messages that wait in a queue nobody consumes."""
    data = {"queues": [d.to_dict() for d in depths]}
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
    from celery.exceptions import ImproperlyConfigured

    started = time.monotonic()
    url = mask_url(str(app.conf.result_backend or ""))
    try:
        backend = app.backend
    except (ImproperlyConfigured, ImportError, ValueError) as exc:  # unknown scheme, client package missing
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
    return _ask_store(backend, url, kind, timeout, started, data)


def _ask_store(backend: Any, url: str, kind: str, timeout: float, started: float, data: dict[str, Any]) -> Check:
    """Any other store: ask it for an unknown task's state (one read, no write)."""
    import uuid

    box: list[Any] = []

    def ask() -> None:
        try:
            box.append(backend.get_task_meta(f"celeryctl-doctor-{uuid.uuid4().hex}"))
        except Exception as exc:  # noqa: BLE001 - the store's client library failing (redis, SQLAlchemy, ...: no common base class); reported below
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
    except broker_errors() as exc:  # a permission refused (403) or the channel or connection failing
        return Check(
            "backend",
            FAIL,
            time.monotonic() - started,
            f"rpc:// reply path failed: {type(exc).__name__}: {exc}",
            "the user needs configure/write/read on its reply queues (names are UUIDs): grant '.*'",
            data,
        )
    finally:
        close_quietly(chan)
    took = time.monotonic() - started
    if not got:
        return Check("backend", FAIL, took, f"rpc:// reply did not come back within {timeout:g} s", None, data)
    data["round_trip_ms"] = round(took * 1000, 2)
    return Check("backend", OK, took, f"rpc:// reply path works ({took * 1000:.1f} ms)", data=data)


# --------------------------------------------------------------------------- check 10: the workers


def _workers(app: Celery, conn: Any, app_queues: list[str], depths: list[QueueDepth], ping_timeout: float) -> Check:
    started = time.monotonic()
    need = {d.name: d.consumers or 0 for d in depths}
    try:
        workers, took = ping_workers(app, conn, ping_timeout, need)
    except broker_errors() as exc:  # a permission refused (403) or the channel or connection failing
        return Check(
            "workers",
            FAIL,
            time.monotonic() - started,
            f"the ping could not be sent: {type(exc).__name__}: {exc}",
            "the user needs configure/write/read on celery.pidbox and its reply queues",
        )
    return check_workers(workers, took, app_queues, depths, ping_timeout)


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
        close_quietly(chan)
    return workers, time.monotonic() - started


def check_workers(
    workers: dict[str, list[str]], seconds: float, app_queues: list[str], depths: list[QueueDepth], ping_timeout: float
) -> Check:
    """Check 10: some worker answered, and every queue of the app has one consuming it."""
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
