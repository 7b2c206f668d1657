"""Running a Celery worker in-process with durable defaults.

:func:`prepare` loads nothing itself: it takes the loaded app, applies
:data:`DURABLE_DEFAULTS` where the app left Celery's defaults, checks that the
broker answers (so a broker that is down is a clear error within seconds, not an endless retry
loop) and returns a :class:`WorkerPlan` that the CLI shows as a banner.  :func:`run` then hands the
plan to Celery's own ``worker`` command (so any ``celery worker`` option can follow ``--``).
SIGTERM gives the running tasks ``grace`` seconds to finish, then re-queues the rest and exits 0
(:mod:`celeryctl.worker_steps`); Ctrl-C is Celery's: warm, and cold the second time.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from celeryctl import topology, validate, worker_steps
from celeryctl.broker import BrokerUrl, ensure_reachable, mask_url, own_node
from celeryctl.celeryapp import require_backend, require_pool, run_celery, task_names
from celeryctl.errors import ConfigError, TimeoutError_, UsageError, WorkerError
from celeryctl.health import record_path
from celeryctl.settings import Settings
from celeryctl.topology import QueuePolicy
from celeryctl.worker_steps import DEFAULT_GRACE

if TYPE_CHECKING:
    from celery import Celery

POOLS = ("prefork", "solo", "threads", "eventlet", "gevent")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: Defaults under which no task is lost and monitors see every task.  They are applied only
#: where the app leaves the setting at Celery's own default.
#:
#: Their cost, measured with a pre-filled queue on a 2-CPU machine (worker -c 2, ``add``): CPU per
#: task, worker + broker, 1.1 + 0.54 ms with all of them (drains 887-927/s) against 0.63 + 0.29 ms
#: with Celery's defaults (1,700/s).  Task events were the largest part (0.45 ms): they are kept,
#: but sent in batches (``celeryctl.worker_steps.EVENT_FLUSH_INTERVAL``), which leaves 0.11 ms
#: (0.88 + 0.42 ms, 1,122/s).  STARTED costs 0.14 + 0.09 ms (one more reply per task) and is kept
#: for the ``--wait`` display.  Prefetch 4 instead of 1 drains 14% more short tasks, but lets a
#: process hold tasks that an idle process could run, which long tasks must not suffer: it stays
#: 1 (floods of short tasks: ``celeryctl worker -- --prefetch-multiplier 4``).  Rate limits,
#: gossip, mingle, heartbeat and ``-O`` made no difference beyond the noise.
DURABLE_DEFAULTS: dict[str, object] = {
    "task_acks_late": True,  # acknowledge after the task ran, not before
    "task_reject_on_worker_lost": True,  # a killed worker process re-queues its task
    "worker_prefetch_multiplier": 1,  # long tasks are not hoarded by one process
    "worker_send_task_events": True,  # monitors (flower, celery events) see tasks
    "task_send_sent_event": True,
    "task_track_started": True,  # STARTED is reported, so a display shows it
}


def apply_durable_defaults(app: Celery) -> dict[str, object]:
    """Set :data:`DURABLE_DEFAULTS` where the app kept Celery's default; return what was set."""
    from celery.app.defaults import DEFAULTS

    applied: dict[str, object] = {}
    conf = app.conf
    for key, value in DURABLE_DEFAULTS.items():
        if conf.get(key) == DEFAULTS.get(key) and conf.get(key) != value:
            conf[key] = value
            applied[key] = value
    return applied


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
    queue_type: str = "classic"  # "quorum", "classic", or "app" (the app declares its own queues)
    max_deliveries: int | None = None
    grace: float = DEFAULT_GRACE  # seconds the running tasks get after SIGTERM
    node: str = ""  # the node name Celery gives the worker (celery@HOST, or -n with %h expanded)
    health_file: str | None = None  # the health record (celeryctl probe worker reads it)
    health_port: int | None = None  # /livez and /readyz on 127.0.0.1

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
            "queue_type": self.queue_type,
            "max_deliveries": self.max_deliveries,
            "grace": self.grace,
            "node": self.node,
            "health_file": self.health_file,
            "health_port": self.health_port,
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
    queue_policy: QueuePolicy | None = None,
    grace: float = DEFAULT_GRACE,
    data_dir: Path | None = None,
    health_file: Path | None = None,
    health_port: int | None = None,
) -> WorkerPlan:
    """Configure ``app`` for a worker, check the broker, and return what :func:`run` will start.

    The health record goes to ``health_file``, else ``<data_dir>/health/<node>.json``.
    """
    if concurrency is not None and concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {concurrency}")
    level = loglevel.upper()
    if level not in LOG_LEVELS:
        raise UsageError(f"unknown log level '{loglevel}'", f"use one of {', '.join(LOG_LEVELS)}")
    if pool is not None and pool not in POOLS:
        raise UsageError(f"unknown pool '{pool}'", f"use one of {', '.join(POOLS)}")
    require_pool(pool)
    applied = apply_durable_defaults(app) if durable else {}
    node = node_of(hostname)
    record = health_file or (record_path(data_dir, node) if data_dir is not None else None)
    if health_port is not None and record is None:
        raise UsageError("--health-port needs a health record", "give --health-file PATH")
    worker_steps.install(app, batching=durable, grace=grace, health_file=record, beat=beat)
    queue_list = [validate.queue_name(q.strip(), "-Q") for q in ",".join(queues or []).split(",") if q.strip()]
    check_app_queues(app)
    own_queues = bool(app.conf.task_queues)
    pol = queue_policy or QueuePolicy(explicit=False)
    managed = topology.configure_app(app, pol, queue_list)
    require_backend(app)
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
    ensure_reachable(broker_url, wait=wait_for_broker)
    pol = topology.policy_of(app) if managed else pol
    topology.declare(broker_url, managed, pol)
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
        queue_type=pol.queue_type if managed else ("app" if own_queues else "classic"),
        max_deliveries=pol.max_deliveries if managed else None,
        grace=grace,
        node=node,
        health_file=str(record) if record is not None else None,
        health_port=health_port,
    )


def node_of(hostname: str | None) -> str:
    """The node name Celery will give the worker: ``celery@HOST`` or ``-n`` with %h, %n, %d expanded."""
    from celery.utils.nodenames import default_nodename, host_format

    return str(host_format(default_nodename(hostname)))


def check_app_queues(app: Celery) -> None:
    """The queue names in the app's own configuration, checked before Celery declares them.

    An over-long name otherwise fails inside Celery's consumer (``struct.error``) after the
    worker started, with a traceback.
    """
    names: list[tuple[str, str]] = [("task_default_queue", str(app.conf.task_default_queue))]
    for queue in app.conf.task_queues or ():
        names.append(("task_queues", str(getattr(queue, "name", queue))))
    for setting, name in names:
        try:
            validate.queue_name(name, f"queue name {name[:40]!r}{'...' if len(name) > 40 else ''} in {setting}")
        except UsageError as exc:
            raise ConfigError(
                f"app '{app.main}': {exc.message}",
                f"fix {setting} in the app's configuration",
                details={"setting": setting},
            ) from None


def run(app: Celery, plan: WorkerPlan) -> int:
    """Run Celery's worker in this process until it shuts down; return its exit code."""
    from click.exceptions import ClickException

    health = None
    if plan.health_file is not None:
        health = worker_steps.open_health(Path(plan.health_file), plan.node, beat=plan.beat, port=plan.health_port)
    try:
        # --quiet: celeryctl shows its own banner; Celery still logs "ready" and each task.
        return run_celery(app, ["--quiet", *plan.argv])
    except ClickException as exc:  # Celery's own click, for options after "--"
        raise UsageError(f"celery worker: {exc.format_message()}", "see: celery worker --help") from None
    except OSError as exc:  # a file named after "--" (--pidfile, --statedb, --logfile) that cannot be opened
        raise WorkerError(f"celery worker could not start: {exc}", "check the paths given after --") from None
    finally:
        if health is not None:
            worker_steps.close_health(*health)


# --------------------------------------------------------------------------- a worker in the background


class BackgroundWorker:
    """``celeryctl worker`` in a subprocess, for ``celeryctl demo``: started, pinged, stopped warmly.

    The broker URL goes to the child in its environment (``CELERYCTL_BROKER_URL``), never in argv.
    """

    def __init__(
        self,
        broker_url: str,
        log_file: Path,
        *,
        app: str | None = None,
        queue: str | None = None,
        concurrency: int = 2,
    ) -> None:
        import socket
        import uuid

        self.broker_url = broker_url
        self.log_file = log_file
        self.app = app
        self.queue = queue
        self.concurrency = concurrency
        self.node = f"celeryctl-demo-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        import sys

        argv = [sys.executable, "-m", "celeryctl", "worker", "-c", str(self.concurrency), "-n", self.node]
        if self.app:
            argv += ["-A", self.app]
        if self.queue:
            argv += ["-Q", self.queue]
        env = {**os.environ, "CELERYCTL_BROKER_URL": self.broker_url, "PYTHONUNBUFFERED": "1"}
        from celeryctl.files import open_log, private_dir

        private_dir(self.log_file.parent)
        with open_log(self.log_file) as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        self.wait_ready(timeout)

    def _tail(self, lines: int = 15) -> list[str]:
        try:
            return self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    def wait_ready(self, timeout: float) -> None:
        """Wait until the worker answers a ping; a worker that exits or stays silent is an error."""
        import time

        from amqp.exceptions import AMQPError
        from celery import Celery
        from kombu.exceptions import OperationalError

        probe = Celery("celeryctl-ping", broker=self.broker_url)
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise WorkerError(
                        f"the worker exited with code {self.proc.returncode} before it was ready",
                        f"its log: {self.log_file}",
                        details={"log_tail": self._tail()},
                    )
                try:
                    if probe.control.ping(destination=[self.node], timeout=0.5):
                        return
                except (OperationalError, AMQPError, OSError):  # the broker refuses or drops us: the deadline decides
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError_(
                        f"the worker did not answer within {timeout:g} s",
                        f"its log: {self.log_file}",
                        details={"log_tail": self._tail()},
                    )
        finally:
            probe.close()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (warm shutdown: running tasks finish), then SIGKILL after ``timeout``."""
        import signal

        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


@dataclass
class DemoSession:
    app: Celery
    broker: str  # masked
    node_started: bool
    worker: BackgroundWorker
    queue: str


@contextmanager
def demo_session(settings: Settings, *, on_progress: Callable[[str], None] | None = None) -> Iterator[DemoSession]:
    """A worker for the demo on the configured broker (``settings.broker_url`` must be set).

    When the URL is for celeryctl's own node (saved by setup-broker) and the node is stopped, it
    is started first.  The worker consumes a queue of its own, so that other workers on the
    broker never take the demo's task; it is stopped on the way out, the broker is left running.
    """
    from celeryctl.celeryapp import load_app

    say = on_progress or (lambda _m: None)
    url = settings.broker_url
    assert url, "the demo provisions a broker URL before it starts a worker"
    node_started = False
    node = settings.local_node()
    state = node.read_state()
    # Started only when no member of celeryctl's cluster that the URL names runs (member 1 dead
    # and member 2 running is a cluster that works).
    if BrokerUrl.parse(url).is_node(state) and own_node(settings, url) is None:
        assert state is not None
        say("starting celeryctl's private RabbitMQ node")
        _info, node_started = node.start(state.port, on_progress=say)
    ensure_reachable(url)
    app = load_app(None, settings, explicit=frozenset({"broker_url"}))
    queue = "celeryctl.demo"
    topology.configure_app(app, topology.policy(settings), [queue])  # as the worker declares it
    worker = BackgroundWorker(url, settings.data_dir / "demo-worker.log", queue=queue)
    say("starting a worker")
    worker.start()
    try:
        yield DemoSession(app, mask_url(url), node_started, worker, queue)
    finally:
        say("stopping the worker")
        worker.stop()
