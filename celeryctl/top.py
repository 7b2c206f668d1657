"""``celeryctl top``: the event-fed model behind the dashboard, and the threads that feed it.

``TopState`` turns Celery events into a :class:`TopView` (plain data; it knows nothing of
display: :mod:`celeryctl.render.top` draws it).  ``TopSession`` feeds it from a Celery event
receiver thread (reconnecting with backoff when the broker goes away) and a poller thread for
queue depths (through :func:`celeryctl.broker.queue_lister`'s choice, made once) and worker stats.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from celeryctl.broker import QueueDepth, QueueLister, app_queue_names, ensure_reachable, mask_url, queue_lister
from celeryctl.broker.queues import fold_dead_letters, with_dead_letter_queues
from celeryctl.celeryapp import app_broker
from celeryctl.errors import CeleryctlError
from celeryctl.status import DEFAULT_INSPECT_TIMEOUT, WorkerStatus, describe, inspect_workers

if TYPE_CHECKING:
    from celery import Celery

    from celeryctl.settings import Settings

# --------------------------------------------------------------------------- the model


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
    queues: list[QueueDepth]
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
        self._queues: list[QueueDepth] = []
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

    def set_queues(self, queues: list[QueueDepth] | None, error: str | None = None) -> None:
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


# --------------------------------------------------------------------------- the feeds


def _broker_errors() -> tuple[type[BaseException], ...]:
    """What a refused, lost or broken broker connection raises through kombu and py-amqp."""
    import amqp.exceptions
    from kombu.exceptions import KombuError

    return (KombuError, amqp.exceptions.AMQPError, OSError)


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
        self.url = app_broker(app)
        self.refresh = refresh
        self.inspect_timeout = inspect_timeout
        self.extra_queues = list(queues)
        self.state = TopState(mask_url(self.url))
        self._stop = threading.Event()
        self._receiver: Any = None
        self._threads: list[threading.Thread] = []
        self._lister: QueueLister | None = None
        self.first_poll = threading.Event()  # set once workers and queues were asked once

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Check the broker and the URL's login (exit 6 or 7), and a configured management API
        (exit 6, 7 or 5), then start the events and poll threads."""
        ensure_reachable(self.url)
        self._lister = queue_lister(self.settings, self.url)
        if self._lister.api is not None and self._lister.explicit:
            self._lister.api.whoami()  # a wrong --api fails here, not in the queue panel
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
        if self._lister is not None:
            self._lister.close()

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state.connected:
                return True
            time.sleep(0.02)
        return self.state.connected

    def collect(self, duration: float) -> TopView:
        """Run for ``duration`` seconds (events and one queue poll) and return the view."""
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
        expected: tuple[type[BaseException], ...] = (CeleryctlError, *_broker_errors())
        try:
            workers, active = inspect_workers(self.app, self.inspect_timeout)
        except expected:
            return  # the broker is gone or refuses us: the events loop reports it
        self.state.seed(workers, active if all_workers else None)

    def poll_queues(self) -> None:
        import pika.exceptions

        if self._lister is None:
            self._lister = queue_lister(self.settings, self.url)
        names = with_dead_letter_queues([*app_queue_names(self.app), *self.extra_queues])
        try:
            report = self._lister.report(names)
            self.state.set_queues(fold_dead_letters(report.queues))
        except CeleryctlError as exc:
            self.state.set_queues(None, exc.message)
        except (pika.exceptions.AMQPError, OSError) as exc:  # the connection broke during the declares
            self.state.set_queues(None, describe(exc))

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
            except _broker_errors() as exc:  # refused, lost or ended: report, back off, retry
                if self._stop.is_set():
                    return
                self.state.connection_down(describe(exc))
            finally:
                self._receiver = None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _enable_events(self) -> None:
        # Workers started without -E send heartbeats only; ask them for task events too.
        try:
            self.app.control.enable_events()
        except _broker_errors():
            pass  # best effort: heartbeats still arrive, and the events loop reports a lost broker

