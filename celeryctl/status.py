"""``celeryctl status``: one snapshot of the workers and the queues.

Workers are asked through Celery's remote control with short deadlines (a ``stats`` broadcast
that waits ``timeout`` seconds for answers, then ``active``/``active_queues`` addressed to the
workers that answered, which return as soon as they all did).  Queue depths come from
:func:`celeryctl.broker.queue_lister`'s choice: the management API (any broker; ready and
unacknowledged apart, rates), ``rabbitmqctl list_queues`` on celeryctl's own node, else passive
declares (ready messages and consumers only).
A queue's dead-letter queue (``NAME.dead``) is folded into it as its ``dead`` count.

Also here, shared by ``status``, ``queues``, ``purge``, ``top`` and ``flower``: which broker
they look at (the ``-A`` app's own, unless a flag or ``CELERYCTL_*`` variable overrides it).
Returns data and raises :mod:`celeryctl.errors`; nothing prints.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from celeryctl.broker import (
    QueueReport,
    app_queue_names,
    ensure_reachable,
    mask_url,
    queue_lister,
    queues_via_amqp,
)
from celeryctl.broker.queues import fold_dead_letters, with_dead_letter_queues
from celeryctl.celeryapp import app_broker
from celeryctl.errors import UnreachableError

if TYPE_CHECKING:
    from celery import Celery

    from celeryctl.settings import Settings

T = TypeVar("T")

#: How long ``status`` waits for workers to answer the first broadcast.
DEFAULT_INSPECT_TIMEOUT = 0.5


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, for one line of output."""
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if not text.startswith(type(exc).__name__) else text


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
            "dead": sum(q.dead or 0 for q in self.queues.queues),
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
            f"lost the broker at {mask_url(app_broker(app))} while asking the workers: {describe(exc)}",
            "check that the broker is running (celeryctl broker status) and try again",
        ) from None
    for name, tasks in active.items():
        if name in workers:
            workers[name].active = len(tasks)
    for name, qs in queues.items():
        if name in workers and isinstance(qs, list):
            workers[name].queues = sorted(str(q.get("name")) for q in qs if isinstance(q, dict))
    return [workers[n] for n in sorted(workers)], active


# --------------------------------------------------------------------------- the snapshot


def _in_background(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Callable[[], T]:
    """Run ``fn`` in a daemon thread; the returned function waits for its result (or raises)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - not handled here: re-raised in the caller's thread
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
    url = app_broker(app)
    asked = list(dict.fromkeys(queues))
    lister = queue_lister(settings, url)
    # rabbitmqctl boots an Erlang VM (~0.5 s), the API answers in milliseconds: either starts
    # first and runs while the broker is checked and the workers answer.  A daemon thread: an
    # error exit does not wait for it.
    listing = (
        _in_background(lister.every_queue, include_internal=include_internal) if lister.lists_every_queue else None
    )
    try:
        ensure_reachable(url)
        workers, _active = inspect_workers(app, timeout)
        listed = listing() if listing is not None else None
    finally:
        lister.close()
    if listed is not None:
        source, found = listed
        present = {q.name for q in found}
        report = QueueReport(lister.url.vhost, source, found, [n for n in asked if n not in present])
    else:
        names = [*app_queue_names(app), *(q for w in workers for q in w.queues), *asked]
        report = queues_via_amqp(url, with_dead_letter_queues(names), asked)
    report.queues = fold_dead_letters(report.queues)
    return Status(mask_url(url), workers, report, time.monotonic() - started)
