"""Running a Celery worker in-process with durable defaults.

:func:`prepare` loads nothing itself: it takes the loaded app, applies
:data:`celeryctl.celeryapp.DURABLE_DEFAULTS` where the app left Celery's defaults, checks that the
broker answers (so a broker that is down is a clear error within seconds, not an endless retry
loop) and returns a :class:`WorkerPlan` that the CLI shows as a banner.  :func:`run` then hands the
plan to Celery's own ``worker`` command (so any ``celery worker`` option can follow ``--``);
SIGTERM and Ctrl-C give Celery's warm shutdown: the tasks in progress finish first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from celeryctl.celeryapp import apply_durable_defaults, ensure_broker, task_names
from celeryctl.errors import UsageError
from celeryctl.settings import mask_url

if TYPE_CHECKING:
    from celery import Celery

POOLS = ("prefork", "solo", "threads", "eventlet", "gevent")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass
class WorkerPlan:
    argv: list[str]
    broker: str  # masked
    backend: str  # masked
    app: str
    queues: list[str]
    concurrency: int
    pool: str
    hostname: str | None
    tasks: list[str]
    applied_defaults: dict[str, object] = field(default_factory=dict)
    beat: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "app": self.app,
            "broker_url": self.broker,
            "result_backend": self.backend,
            "queues": self.queues,
            "concurrency": self.concurrency,
            "pool": self.pool,
            "hostname": self.hostname,
            "tasks": self.tasks,
            "applied_defaults": self.applied_defaults,
            "beat": self.beat,
        }


def prepare(
    app: Celery,
    *,
    concurrency: int | None = None,
    queues: list[str] | None = None,
    loglevel: str = "INFO",
    pool: str | None = None,
    hostname: str | None = None,
    beat: bool = False,
    extra: list[str] | None = None,
    wait_for_broker: float = 0.0,
    durable: bool = True,
) -> WorkerPlan:
    """Configure ``app`` for a worker, check the broker, and return what :func:`run` will start."""
    if concurrency is not None and concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {concurrency}")
    level = loglevel.upper()
    if level not in LOG_LEVELS:
        raise UsageError(f"unknown log level '{loglevel}'", f"use one of {', '.join(LOG_LEVELS)}")
    if pool is not None and pool not in POOLS:
        raise UsageError(f"unknown pool '{pool}'", f"use one of {', '.join(POOLS)}")
    applied = apply_durable_defaults(app) if durable else {}
    queue_list = [q.strip() for q in ",".join(queues or []).split(",") if q.strip()]
    argv = ["worker", "--loglevel", level]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    if queue_list:
        argv += ["--queues", ",".join(queue_list)]
    if pool:
        argv += ["--pool", pool]
    if hostname:
        argv += ["--hostname", hostname]
    if beat:
        argv.append("--beat")
    argv += list(extra or [])
    names = task_names(app)
    broker_url = str(app.conf.broker_url)
    ensure_broker(broker_url, wait=wait_for_broker)
    effective_pool = pool or "prefork"
    return WorkerPlan(
        argv=argv,
        broker=mask_url(broker_url),
        backend=mask_url(str(app.conf.result_backend)),
        app=str(app.main),
        queues=queue_list or [str(app.conf.task_default_queue)],
        concurrency=concurrency or (1 if effective_pool == "solo" else os.cpu_count() or 1),
        pool=effective_pool,
        hostname=hostname,
        tasks=names,
        applied_defaults=applied,
        beat=beat,
    )


def run(app: Celery, plan: WorkerPlan) -> int:
    """Run Celery's worker in this process until it shuts down; return its exit code."""
    from click.exceptions import ClickException

    try:
        # --quiet: celeryctl shows its own banner; Celery still logs "ready" and each task.
        code = app.start(argv=["--quiet", *plan.argv])
    except ClickException as exc:  # Celery's own click, for options after "--"
        raise UsageError(f"celery worker: {exc.format_message()}", "see: celery worker --help") from None
    return int(code or 0)
