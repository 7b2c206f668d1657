"""Monitoring core: a status snapshot, queue depths, purge, the state behind ``top``, and Flower.

Everything here returns data and raises :mod:`celeryctl.errors`; nothing prints.  Workers are
asked through Celery's remote control with short deadlines (a ``stats`` broadcast that waits
``timeout`` seconds for answers, then ``active``/``active_queues`` addressed to the workers that
answered, which return as soon as they all did).  Queue depths come from ``rabbitmqctl
list_queues`` when the broker is celeryctl's own node (ready and unacknowledged apart), else
from a passive ``queue.declare`` through pika (ready messages and consumers only).

``TopState`` is the event-fed model behind ``celeryctl top``; it knows nothing of display.
``TopSession`` feeds it from a Celery event receiver thread (reconnecting with backoff when the
broker goes away) and a poller thread for queue depths.
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from celeryctl.errors import (
    AccessRefusedError,
    CeleryctlError,
    NotInstalledError,
    UnreachableError,
    UsageError,
)
from celeryctl.settings import Settings, mask_url

if TYPE_CHECKING:
    from celery import Celery

    from celeryctl.rabbitmq.ctl import Runner

T = TypeVar("T")

#: How long ``status`` waits for workers to answer the first broadcast.
DEFAULT_INSPECT_TIMEOUT = 0.5
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


# --------------------------------------------------------------------------- data


@dataclass
class WorkerStatus:
    """One worker as its ``stats`` reply (and later heartbeats) describe it."""

    name: str
    online: bool = True
    pool: str | None = None  # prefork, solo, threads, ...
    concurrency: int | None = None
    processed: int = 0  # tasks this worker process has received since it started
    active: int = 0  # tasks running now
    uptime: float | None = None  # seconds
    pid: int | None = None
    queues: list[str] = field(default_factory=list)
    processed_by_task: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QueueStatus:
    name: str
    ready: int | None  # messages waiting for a consumer
    unacked: int | None  # delivered, not yet acknowledged (None: unknown through AMQP)
    consumers: int | None

    @property
    def messages(self) -> int | None:
        if self.ready is None:
            return None
        return self.ready + (self.unacked or 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "messages": self.messages}


@dataclass
class QueueReport:
    vhost: str
    source: str  # "rabbitmqctl" (celeryctl's node) or "amqp" (passive declare)
    queues: list[QueueStatus]
    missing: list[str] = field(default_factory=list)  # asked-for queues that do not exist

    def to_dict(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "source": self.source,
            "queues": [q.to_dict() for q in self.queues],
            "missing": self.missing,
        }


@dataclass
class Status:
    broker: str  # masked
    workers: list[WorkerStatus]
    queues: QueueReport
    seconds: float

    @property
    def totals(self) -> dict[str, int | None]:
        def total(values: Iterable[int | None]) -> int | None:
            vals = list(values)
            return None if any(v is None for v in vals) else sum(v for v in vals if v is not None)

        return {
            "workers": len(self.workers),
            "concurrency": total(w.concurrency for w in self.workers),
            "processed": sum(w.processed for w in self.workers),
            "active": sum(w.active for w in self.workers),
            "ready": total(q.ready for q in self.queues.queues),
            "unacked": total(q.unacked for q in self.queues.queues),
            "consumers": total(q.consumers for q in self.queues.queues),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "workers": [w.to_dict() for w in self.workers],
            "queues": [q.to_dict() for q in self.queues.queues],
            "queue_source": self.queues.source,
            "vhost": self.queues.vhost,
            "totals": self.totals,
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------- broker helpers


def vhost_of(url: str) -> str:
    """The vhost of an AMQP URL as kombu reads it (``//`` and ``/%2F`` are ``/``)."""
    path = urlsplit(url.replace("pyamqp://", "amqp://", 1)).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def local_node_runner(settings: Settings, url: str) -> Runner | None:
    from celeryctl.broker import own_node_runner

    return own_node_runner(settings, url)


def local_management_url(settings: Settings, url: str) -> str | None:
    from celeryctl.broker import own_management_url

    return own_management_url(settings, url)


def _app_if_named(settings: Settings) -> Celery | None:
    if not settings.app:
        return None
    from celeryctl.celeryapp import load_app

    return load_app(settings.app, settings)


def resolve_broker(settings: Settings) -> str:
    """The broker URL: the ``-A`` app's own when it sets one (unless a flag/env overrides), else settings'."""
    app = _app_if_named(settings)
    return app_broker(app) if app is not None else settings.broker


def app_broker(app: Celery) -> str:
    return str(app.conf.broker_url)


def queues_report(settings: Settings, names: Iterable[str] = (), *, include_internal: bool = False) -> QueueReport:
    """:func:`list_queues` for the resolved broker; on another broker the app's queues and ``names``."""
    app = _app_if_named(settings)
    url = app_broker(app) if app is not None else settings.broker
    default = app_queue_names(app) if app is not None else ["celery"]
    report = list_queues(url, settings, [*default, *names], include_internal=include_internal)
    asked = set(names)
    report.missing = [m for m in report.missing if m in asked]
    return report


def check_broker(url: str, timeout: float = 2.0) -> None:
    """Raise :class:`UnreachableError`/:class:`AccessRefusedError` unless we can log in."""
    from celeryctl.broker import ensure_reachable

    ensure_reachable(url, timeout=timeout)


def _pika_connect(url: str, timeout: float = 3.0) -> Any:
    import pika

    from celeryctl.broker import BrokerUrl
    from celeryctl.probe import classify_pika_error

    params = BrokerUrl.parse(url).pika_parameters(timeout)
    try:
        return pika.BlockingConnection(params)
    except Exception as exc:  # noqa: BLE001 - every failure is classified
        kind, message = classify_pika_error(
            exc,
            params.host,
            params.port,
            params.virtual_host,
            params.credentials.username,  # type: ignore[attr-defined]
        )
        if kind in ("auth", "vhost"):
            raise AccessRefusedError(
                f"the broker at {mask_url(url)} refused access: {message}",
                "check the user, password and vhost in the broker URL",
            ) from None
        raise UnreachableError(
            f"cannot reach the broker at {mask_url(url)}: {message}",
            "start it (celeryctl broker start) or check --broker / CELERYCTL_BROKER_URL",
        ) from None


# --------------------------------------------------------------------------- workers


def _pool_name(implementation: str | None) -> str | None:
    if not implementation:
        return None
    # "celery.concurrency.prefork:TaskPool" -> "prefork"
    module = implementation.split(":", 1)[0]
    return module.rsplit(".", 1)[-1]


def _worker_from_stats(name: str, stats: dict[str, Any]) -> WorkerStatus:
    pool = stats.get("pool") or {}
    concurrency = pool.get("max-concurrency")
    if not isinstance(concurrency, int):
        procs = pool.get("processes")
        concurrency = len(procs) if isinstance(procs, list) else None
    by_task = {str(k): int(v) for k, v in (stats.get("total") or {}).items()}
    return WorkerStatus(
        name=name,
        pool=_pool_name(pool.get("implementation")),
        concurrency=concurrency,
        processed=sum(by_task.values()),
        uptime=float(stats["uptime"]) if isinstance(stats.get("uptime"), (int, float)) else None,
        pid=stats.get("pid") if isinstance(stats.get("pid"), int) else None,
        processed_by_task=by_task,
    )


def inspect_workers(
    app: Celery, timeout: float = DEFAULT_INSPECT_TIMEOUT
) -> tuple[list[WorkerStatus], dict[str, list[dict[str, Any]]]]:
    """Workers that answer a ``stats`` broadcast within ``timeout``, with their active tasks.

    Returns (workers sorted by name, {worker: [active task dicts]}).
    """
    from kombu.exceptions import OperationalError

    try:
        stats = app.control.inspect(timeout=timeout).stats() or {}
        workers = {name: _worker_from_stats(name, s) for name, s in stats.items() if isinstance(s, dict)}
        active: dict[str, list[dict[str, Any]]] = {}
        queues: dict[str, Any] = {}
        if workers:
            # Addressed to the workers that answered, with a limit: returns as soon as all did.
            names = sorted(workers)
            follow = app.control.inspect(timeout=max(timeout, 1.0), destination=names, limit=len(names))
            active = {k: v for k, v in (follow.active() or {}).items() if isinstance(v, list)}
            queues = follow.active_queues() or {}
    except (OperationalError, OSError) as exc:
        raise UnreachableError(
            f"lost the broker at {mask_url(str(app.conf.broker_url))} while asking the workers: {_describe(exc)}",
            "check that the broker is running (celeryctl broker status) and try again",
        ) from None
    if workers:
        for name, tasks in active.items():
            if name in workers:
                workers[name].active = len(tasks)
        for name, qs in queues.items():
            if name in workers and isinstance(qs, list):
                workers[name].queues = sorted(str(q.get("name")) for q in qs if isinstance(q, dict))
    return [workers[n] for n in sorted(workers)], active


# --------------------------------------------------------------------------- queues


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_internal_queue(name: str) -> bool:
    """Celery's own plumbing: remote-control (pidbox), event and ``rpc://`` reply queues."""
    return (
        bool(_UUID.match(name))  # rpc:// result queues are named by a UUID
        or name.endswith(".pidbox")
        or name.startswith(("celeryev.", "amq.", "celery.check.", "celeryctl.check."))
        or name.endswith(".reply.celery.pidbox")
    )


def app_queue_names(app: Celery) -> list[str]:
    names = [app.conf.task_default_queue or "celery"]
    for q in app.conf.task_queues or ():
        name = getattr(q, "name", None)
        if name:
            names.append(str(name))
    return list(dict.fromkeys(names))


def queues_via_ctl(runner: Runner, vhost: str, *, include_internal: bool = False) -> list[QueueStatus]:
    rows = runner.json(
        "list_queues",
        "-p",
        vhost,
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "durable",
        "auto_delete",
        "exclusive",
    )
    out: list[QueueStatus] = []
    for row in rows if isinstance(rows, list) else []:
        name = str(row.get("name", ""))
        if not include_internal and (is_internal_queue(name) or row.get("exclusive") is True):
            continue
        if not include_internal and row.get("auto_delete") is True and not row.get("durable"):
            continue  # rpc:// reply queues and other throw-away queues
        out.append(
            QueueStatus(
                name=name,
                ready=int(row.get("messages_ready") or 0),
                unacked=int(row.get("messages_unacknowledged") or 0),
                consumers=int(row.get("consumers") or 0),
            )
        )
    return sorted(out, key=lambda q: q.name)


def queues_via_amqp(url: str, names: Iterable[str]) -> tuple[list[QueueStatus], list[str]]:
    """Passive declares: (existing queues, missing names).  Unacked is unknown this way."""
    import pika.exceptions as pe

    conn = _pika_connect(url)
    found: list[QueueStatus] = []
    missing: list[str] = []
    try:
        channel = conn.channel()
        for name in dict.fromkeys(names):
            try:
                ok = channel.queue_declare(queue=name, passive=True)
            except pe.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    missing.append(name)
                elif exc.reply_code == 403:
                    raise AccessRefusedError(
                        f"not allowed to look at queue '{name}' on {mask_url(url)}: {exc.reply_text}",
                        "the broker user needs configure permission on the queue",
                    ) from None
                else:
                    raise
                channel = conn.channel()
                continue
            found.append(QueueStatus(name, ok.method.message_count, None, ok.method.consumer_count))
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass
    return sorted(found, key=lambda q: q.name), missing


def list_queues(
    url: str,
    settings: Settings,
    names: Iterable[str] = (),
    *,
    include_internal: bool = False,
    runner: Runner | None = None,
) -> QueueReport:
    """Queue depths on the broker's vhost.

    On celeryctl's own node every queue of the vhost is listed through rabbitmqctl (ready and
    unacknowledged apart); elsewhere the ``names`` given are looked up through AMQP.
    """
    vhost = vhost_of(url)
    wanted = list(dict.fromkeys(names))
    runner = runner or local_node_runner(settings, url)
    if runner is not None:
        try:
            queues = queues_via_ctl(runner, vhost, include_internal=include_internal)
        except CeleryctlError:
            queues = None  # rabbitmqctl failed (cookie, node busy): fall back to AMQP
        if queues is not None:
            present = {q.name for q in queues}
            return QueueReport(vhost, "rabbitmqctl", queues, [n for n in wanted if n not in present])
    found, missing = queues_via_amqp(url, wanted)
    return QueueReport(vhost, "amqp", found, missing)


def queue_depth(url: str, queue: str) -> QueueStatus:
    """One queue through a passive declare; a missing queue is an error."""
    found, missing = queues_via_amqp(url, [queue])
    if missing or not found:
        raise CeleryctlError(
            f"queue '{queue}' does not exist on vhost '{vhost_of(url)}'",
            "list the queues with: celeryctl queues",
            code="queue_not_found",
        )
    return found[0]


def purge(url: str, queue: str) -> int:
    """Remove every ready message from ``queue``; return how many were removed.

    Messages delivered to a consumer and not yet acknowledged are not removed (RabbitMQ keeps
    them; they return to the queue if the consumer goes away).
    """
    import pika.exceptions as pe

    queue_depth(url, queue)  # a clear error for a missing queue
    conn = _pika_connect(url)
    try:
        channel = conn.channel()
        try:
            ok = channel.queue_purge(queue)
        except pe.ChannelClosedByBroker as exc:
            if exc.reply_code == 403:
                raise AccessRefusedError(
                    f"not allowed to purge queue '{queue}': {exc.reply_text}",
                    "the broker user needs read permission on the queue",
                ) from None
            raise CeleryctlError(f"purge of '{queue}' failed: {exc.reply_text}") from None
        return int(ok.method.message_count)
    finally:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


# --------------------------------------------------------------------------- status


def _in_background(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Callable[[], T]:
    """Run ``fn`` in a daemon thread; the returned function waits for its result (or raises)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name="celeryctl-background", daemon=True)
    thread.start()

    def result() -> T:
        thread.join()
        if "error" in box:
            raise box["error"]
        return box["value"]  # type: ignore[no-any-return]

    return result


def status(
    app: Celery,
    settings: Settings,
    *,
    timeout: float = DEFAULT_INSPECT_TIMEOUT,
    queues: Iterable[str] = (),
    include_internal: bool = False,
) -> Status:
    """One snapshot: workers (through remote control) and queues, asked at the same time."""
    started = time.monotonic()
    url = str(app.conf.broker_url)
    runner = local_node_runner(settings, url)
    # rabbitmqctl boots an Erlang VM (~0.5 s): start it first and let it run while the broker
    # is checked and the workers answer.  A daemon thread: an error exit does not wait for it.
    listing = (
        _in_background(queues_via_ctl, runner, vhost_of(url), include_internal=include_internal) if runner else None
    )
    check_broker(url)
    workers, _active = inspect_workers(app, timeout)
    names = [*app_queue_names(app), *(q for w in workers for q in w.queues), *queues]
    report: QueueReport | None = None
    if listing is not None:
        try:
            listed = listing()
            present = {q.name for q in listed}
            wanted = list(dict.fromkeys(queues))
            report = QueueReport(vhost_of(url), "rabbitmqctl", listed, [n for n in wanted if n not in present])
        except CeleryctlError:
            report = None
    if report is None:
        found, missing = queues_via_amqp(url, names)
        report = QueueReport(vhost_of(url), "amqp", found, [m for m in missing if m in set(queues)])
    return Status(mask_url(url), workers, report, time.monotonic() - started)


# --------------------------------------------------------------------------- top: the model


@dataclass
class RunningTask:
    uuid: str
    name: str
    worker: str
    started: float  # wall clock, local

    def runtime(self, now: float) -> float:
        return max(0.0, now - self.started)


@dataclass
class Failure:
    uuid: str
    name: str
    worker: str
    exception: str
    when: float
    retried: bool = False  # a retry, not a final failure


@dataclass
class WorkerView:
    name: str
    online: bool
    pool: str | None
    concurrency: int | None
    processed: int
    active: int
    last_seen: float | None  # seconds since the last event from it
    pid: int | None
    loadavg: list[float] | None = None


@dataclass
class TopView:
    """What ``top`` shows at one moment; plain data, ready to render or dump as JSON."""

    broker: str
    connected: bool
    broker_error: str | None
    disconnected_for: float | None
    reconnects: int
    workers: list[WorkerView]
    running: list[tuple[RunningTask, float]]  # (task, runtime seconds)
    failures: list[Failure]
    received: int
    succeeded: int
    failed: int
    retried: int
    rate: float  # tasks finished per second, over the last few seconds
    history: list[int]  # tasks finished per second, oldest first
    queues: list[QueueStatus]
    queues_error: str | None
    events: int
    uptime: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "broker": self.broker,
            "connected": self.connected,
            "broker_error": self.broker_error,
            "workers": [asdict(w) for w in self.workers],
            "running": [{**asdict(t), "runtime": round(rt, 3)} for t, rt in self.running],
            "failures": [asdict(f) for f in self.failures],
            "counts": {
                "received": self.received,
                "succeeded": self.succeeded,
                "failed": self.failed,
                "retried": self.retried,
            },
            "rate": self.rate,
            "history": self.history,
            "queues": [q.to_dict() for q in self.queues],
            "events": self.events,
        }


@dataclass
class _Worker:
    name: str
    online: bool = True
    pool: str | None = None
    concurrency: int | None = None
    processed: int = 0
    active: int = 0
    pid: int | None = None
    freq: float = 2.0
    last_seen: float | None = None
    loadavg: list[float] | None = None
    gone: bool = False  # said worker-offline (clean shutdown)


class TopState:
    """Celery events in, a :class:`TopView` out.  Thread-safe; knows nothing of display.

    Times are the local clock at arrival (``clock``), so skew between hosts does not matter.
    A worker is offline after a ``worker-offline`` event, or when no event came from it for
    ``expire_factor`` heartbeat periods; any later event brings it back.
    """

    def __init__(
        self,
        broker: str = "",
        *,
        history: int = 60,
        max_failures: int = 8,
        expire_factor: float = 2.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.clock = clock
        self.started = clock()
        self.expire_factor = expire_factor
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._names: OrderedDict[str, str] = OrderedDict()  # uuid -> task name (from task-received)
        self._running: dict[str, RunningTask] = {}
        self._failures: deque[Failure] = deque(maxlen=max_failures)
        self._history_len = history
        self._buckets: dict[int, int] = {}
        self.received = self.succeeded = self.failed = self.retried = 0
        self.events = 0
        self.connected = False
        self.broker_error: str | None = None
        self._down_since: float | None = None
        self.reconnects = 0
        self._ever_connected = False
        self._queues: list[QueueStatus] = []
        self.queues_error: str | None = None

    # ----------------------------------------------------------------- inputs
    def seed(self, workers: Iterable[WorkerStatus], active: dict[str, list[dict[str, Any]]] | None = None) -> None:
        """Start from a remote-control snapshot (workers known before their first heartbeat)."""
        now = self.clock()
        with self._lock:
            for ws in workers:
                w = self._workers.setdefault(ws.name, _Worker(ws.name))
                w.online, w.gone = True, False
                w.pool, w.concurrency = ws.pool or w.pool, ws.concurrency or w.concurrency
                w.processed = max(w.processed, ws.processed)
                w.active, w.pid = ws.active, ws.pid or w.pid
                w.last_seen = w.last_seen or now
            for worker, tasks in (active or {}).items():
                for t in tasks:
                    uid = str(t.get("id") or "")
                    if not uid or uid in self._running:
                        continue
                    started = t.get("time_start")
                    # time_start is the worker's monotonic clock in some pools: trust it only if plausible
                    begin = float(started) if isinstance(started, (int, float)) and 0 < now - started < 86400 else now
                    self._running[uid] = RunningTask(uid, str(t.get("name") or "?"), worker, begin)

    def on_event(self, event: dict[str, Any]) -> None:
        """Handle one Celery event (as given to ``Receiver`` handlers)."""
        kind = str(event.get("type", ""))
        host = str(event.get("hostname") or "")
        now = self.clock()
        with self._lock:
            self.events += 1
            if host:
                self._touch(host, now, event)
            if kind == "worker-offline":
                w = self._workers.get(host)
                if w is not None:
                    w.online, w.gone, w.active = False, True, 0
                for uid in [u for u, t in self._running.items() if t.worker == host]:
                    del self._running[uid]
            elif kind == "worker-heartbeat":
                w = self._workers[host]
                if isinstance(event.get("processed"), int):
                    w.processed = event["processed"]
                if isinstance(event.get("active"), int):
                    w.active = event["active"]
            elif kind.startswith("task-"):
                self._on_task(kind, event, host, now)

    def _touch(self, host: str, now: float, event: dict[str, Any]) -> None:
        w = self._workers.get(host)
        if w is None:
            w = self._workers[host] = _Worker(host)
        if event.get("type") != "worker-offline":
            w.online, w.gone = True, False
        w.last_seen = now
        if isinstance(event.get("freq"), (int, float)) and event["freq"] > 0:
            w.freq = float(event["freq"])
        if isinstance(event.get("pid"), int) and str(event.get("type", "")).startswith("worker-"):
            w.pid = event["pid"]
        if isinstance(event.get("loadavg"), (list, tuple)):
            w.loadavg = [float(x) for x in event["loadavg"]]

    def _on_task(self, kind: str, event: dict[str, Any], host: str, now: float) -> None:
        uid = str(event.get("uuid") or "")
        if kind == "task-received" or kind == "task-sent":
            if event.get("name"):
                self._names[uid] = str(event["name"])
                self._names.move_to_end(uid)
                while len(self._names) > 10000:
                    self._names.popitem(last=False)
            if kind == "task-received":
                self.received += 1
            return
        name = self._names.get(uid) or str(event.get("name") or "?")
        if kind == "task-started":
            self._running[uid] = RunningTask(uid, name, host, now)
        elif kind in ("task-succeeded", "task-failed", "task-rejected", "task-revoked"):
            self._running.pop(uid, None)
            if kind in ("task-succeeded", "task-failed"):
                bucket = int(now)
                self._buckets[bucket] = self._buckets.get(bucket, 0) + 1
                for old in [b for b in self._buckets if b < bucket - self._history_len - 5]:
                    del self._buckets[old]
            if kind == "task-succeeded":
                self.succeeded += 1
            elif kind == "task-failed":
                self.failed += 1
                self._failures.append(Failure(uid, name, host, str(event.get("exception") or "?"), now))
        elif kind == "task-retried":
            self._running.pop(uid, None)
            self.retried += 1
            self._failures.append(Failure(uid, name, host, str(event.get("exception") or "?"), now, retried=True))

    def set_queues(self, queues: list[QueueStatus] | None, error: str | None = None) -> None:
        with self._lock:
            if queues is not None:
                self._queues = list(queues)
            self.queues_error = error

    def connection_up(self) -> None:
        with self._lock:
            if self._ever_connected and not self.connected:
                self.reconnects += 1
            self.connected, self._ever_connected = True, True
            self.broker_error, self._down_since = None, None

    def connection_down(self, error: str) -> None:
        with self._lock:
            if self.connected or self._down_since is None:
                self._down_since = self.clock()
            self.connected = False
            self.broker_error = error

    # ----------------------------------------------------------------- output
    def view(self, now: float | None = None) -> TopView:
        now = self.clock() if now is None else now
        with self._lock:
            workers = []
            for w in sorted(self._workers.values(), key=lambda x: x.name):
                online = w.online and not w.gone
                if online and w.last_seen is not None and now - w.last_seen > w.freq * self.expire_factor:
                    online = False  # heartbeats stopped: died or unreachable
                workers.append(
                    WorkerView(
                        w.name,
                        online,
                        w.pool,
                        w.concurrency,
                        w.processed,
                        w.active if online else 0,
                        None if w.last_seen is None else max(0.0, now - w.last_seen),
                        w.pid,
                        w.loadavg,
                    )
                )
            offline = {w.name for w in workers if not w.online}
            running = sorted(
                ((t, t.runtime(now)) for t in self._running.values() if t.worker not in offline),
                key=lambda x: -x[1],
            )
            current = int(now)
            history = [self._buckets.get(b, 0) for b in range(current - self._history_len + 1, current + 1)]
            window = 5
            # the current second is still filling up: average the last complete seconds
            recent = history[-window - 1 : -1]
            rate = sum(recent) / max(1, min(window, int(now - self.started))) if recent else 0.0
            return TopView(
                broker=self.broker,
                connected=self.connected,
                broker_error=self.broker_error,
                disconnected_for=None if self._down_since is None else now - self._down_since,
                reconnects=self.reconnects,
                workers=workers,
                running=running,
                failures=list(reversed(self._failures)),
                received=self.received,
                succeeded=self.succeeded,
                failed=self.failed,
                retried=self.retried,
                rate=rate,
                history=history,
                queues=list(self._queues),
                queues_error=self.queues_error,
                events=self.events,
                uptime=now - self.started,
            )

    def worker_names_missing_pool(self) -> list[str]:
        with self._lock:
            return [w.name for w in self._workers.values() if w.concurrency is None and w.online and not w.gone]


# --------------------------------------------------------------------------- top: the feeds


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text


class TopSession:
    """Feeds a :class:`TopState` from Celery events and periodic queue/worker polls.

    ``start()`` launches two daemon threads: the event receiver (reconnecting with backoff
    from 0.5 s to 5 s when the broker connection drops) and the poller (queue depths every
    ``refresh`` seconds, and ``stats`` for workers whose pool is not yet known).
    """

    def __init__(
        self,
        app: Celery,
        settings: Settings,
        *,
        refresh: float = 2.0,
        inspect_timeout: float = DEFAULT_INSPECT_TIMEOUT,
        queues: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.settings = settings
        self.url = str(app.conf.broker_url)
        self.refresh = refresh
        self.inspect_timeout = inspect_timeout
        self.extra_queues = list(queues)
        self.state = TopState(mask_url(self.url))
        self._stop = threading.Event()
        self._receiver: Any = None
        self._threads: list[threading.Thread] = []
        self._runner: Runner | None = None
        self._runner_checked = False
        self.first_poll = threading.Event()  # set once workers and queues were asked once

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        for target, name in ((self._events_loop, "celeryctl-top-events"), (self._poll_loop, "celeryctl-top-poll")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, wait: float = 1.5) -> None:
        self._stop.set()
        recv = self._receiver
        if recv is not None:
            recv.should_stop = True
        deadline = time.monotonic() + wait
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state.connected:
                return True
            time.sleep(0.02)
        return self.state.connected

    def collect(self, duration: float) -> TopView:
        """Run for ``duration`` seconds (events and one queue poll) and return the view."""
        check_broker(self.url)
        self.start()
        try:
            started = time.monotonic()
            self.wait_connected(min(3.0, max(duration, 0.5)))
            self.first_poll.wait(max(duration, 3.0))
            self._stop.wait(max(0.0, duration - (time.monotonic() - started)))
            return self.state.view()
        finally:
            self.stop()

    # ----------------------------------------------------------------- polls
    def poll_workers(self, *, all_workers: bool = False) -> None:
        try:
            workers, active = inspect_workers(self.app, self.inspect_timeout)
        except Exception:  # noqa: BLE001 - the broker may be gone; the events loop reports it
            return
        self.state.seed(workers, active if all_workers else None)

    def poll_queues(self) -> None:
        if not self._runner_checked:
            self._runner = local_node_runner(self.settings, self.url)
            self._runner_checked = True
        names = [*app_queue_names(self.app), *self.extra_queues]
        try:
            report = list_queues(self.url, self.settings, names, runner=self._runner)
            self.state.set_queues(report.queues)
        except CeleryctlError as exc:
            self.state.set_queues(None, exc.message)
        except Exception as exc:  # noqa: BLE001 - keep the dashboard alive
            self.state.set_queues(None, _describe(exc))

    def _poll_loop(self) -> None:
        self.poll_workers(all_workers=True)  # workers and running tasks before any heartbeat
        self.poll_queues()
        self.first_poll.set()
        while not self._stop.wait(self.refresh):
            self.poll_queues()
            if self.state.connected and self.state.worker_names_missing_pool():
                self.poll_workers()

    def _events_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=3)
                    recv = self.app.events.Receiver(conn, handlers={"*": self.state.on_event})
                    recv.connect_max_retries = 1
                    self._receiver = recv
                    if self._stop.is_set():
                        return
                    self.state.connection_up()
                    backoff = 0.5
                    self._enable_events()
                    recv.capture(limit=None, timeout=None, wakeup=True)
                    if self._stop.is_set():
                        return
                    raise ConnectionError("the event stream ended")
            except Exception as exc:  # noqa: BLE001 - any broker failure: report, back off, retry
                if self._stop.is_set():
                    return
                self.state.connection_down(_describe(exc))
            finally:
                self._receiver = None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _enable_events(self) -> None:
        # Workers started without -E send heartbeats only; ask them for task events too.
        try:
            self.app.control.enable_events()
        except Exception:  # noqa: BLE001 - best effort; heartbeats still arrive
            pass


# --------------------------------------------------------------------------- flower


@dataclass
class FlowerPlan:
    """How Flower will run: its own argv (no secrets), the env holding secrets, what to show."""

    argv: list[str]
    env: dict[str, str]
    url: str  # where to open it
    auth: bool
    broker_api: str | None  # masked

    def to_dict(self) -> dict[str, Any]:
        return {"argv": self.argv, "url": self.url, "auth": self.auth, "broker_api": self.broker_api}


def parse_basic_auth(value: str) -> list[tuple[str, str]]:
    pairs = []
    for item in value.split(","):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise UsageError(
                "--basic-auth must be USER:PASSWORD (several separated by commas)",
                "pass it in CELERYCTL_FLOWER_BASIC_AUTH to keep the password out of the process list",
            )
        pairs.append((user, password))
    return pairs


def flower_plan(
    settings: Settings,
    broker_url: str,
    *,
    port: int = 5555,
    address: str = "127.0.0.1",
    basic_auth: str | None = None,
    unsafe_no_auth: bool = False,
    url_prefix: str | None = None,
) -> FlowerPlan:
    """Check the options and work out how to start Flower (raises before anything runs)."""
    if not 0 < port < 65536:
        raise UsageError(f"--port {port} is not a TCP port", "use a port between 1024 and 65535")
    if basic_auth:
        parse_basic_auth(basic_auth)
    loopback = is_loopback(address)
    if not loopback and not basic_auth and not unsafe_no_auth:
        raise UsageError(
            f"refusing to serve Flower on {address or 'every address'} without authentication: "
            "anyone who can reach it could see task arguments and shut workers down",
            "add --basic-auth USER:PASSWORD (or CELERYCTL_FLOWER_BASIC_AUTH), bind to 127.0.0.1, "
            "or pass --unsafe-no-auth if a proxy in front does the authentication",
        )
    argv = [f"--port={port}", f"--address={address}"]
    if url_prefix:
        argv.append(f"--url_prefix={url_prefix}")
    env: dict[str, str] = {}
    if basic_auth:
        env["FLOWER_BASIC_AUTH"] = basic_auth
    broker_api = None
    mgmt = local_management_url(settings, broker_url)
    if mgmt:
        parts = urlsplit(broker_url.replace("pyamqp://", "amqp://", 1))
        user = unquote(parts.username or "guest")
        password = unquote(parts.password or "guest")
        host_port = mgmt.split("://", 1)[1].rstrip("/")
        env["FLOWER_BROKER_API"] = f"http://{quote(user, safe='')}:{quote(password, safe='')}@{host_port}/api/"
        broker_api = mask_url(env["FLOWER_BROKER_API"])
    shown = address if address not in ("", "0.0.0.0", "::") else "127.0.0.1"  # display only
    if ":" in shown:
        shown = f"[{shown}]"
    prefix = f"/{url_prefix.strip('/')}/" if url_prefix else "/"
    return FlowerPlan(argv, env, f"http://{shown}:{port}{prefix}", bool(basic_auth), broker_api)


def require_flower() -> None:
    try:
        import flower  # noqa: F401
    except ImportError:
        raise NotInstalledError(
            "Flower is not installed",
            "pip install 'celeryctl[flower]'",
        ) from None


def run_flower(app: Celery, plan: FlowerPlan) -> int:
    """Run Flower in this process until it is stopped (SIGTERM or Ctrl-C); return its exit code.

    Secrets (basic auth, broker API URL) go through ``FLOWER_*`` variables of this process, the
    broker URL through the app object: none of them appears in any argv.
    """
    require_flower()
    check_broker(str(app.conf.broker_url))
    os.environ.update(plan.env)
    # Flower's own option parser must not see celeryctl's argv.
    code = app.start(["--quiet", "flower", *plan.argv])
    return int(code or 0)
