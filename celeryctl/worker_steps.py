"""What celeryctl's worker does differently from Celery's own: three consumer bootsteps.

- :class:`BatchedTaskEvents`: task events sent in timed batches (:data:`EVENT_FLUSH_INTERVAL`).
- :class:`RejectUndecodable`: a message that cannot be decoded is rejected (dead-lettered on a
  quorum queue), where Celery acknowledges, that is drops, it.
- :class:`GracefulTerm`: SIGTERM gives the running tasks :data:`DEFAULT_GRACE` seconds
  (``--grace``) to finish; what is still running then is re-queued and the worker exits 0.
- :class:`HealthReport`: the worker's health record (:mod:`celeryctl.health`) follows the
  consumer: ready when it consumes, reconnecting when it lost the broker, a heartbeat from the
  event loop every second; with ``--beat``, the scheduler's process reports each pass.

The classes are built on first use, so that importing this module does not import Celery.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celeryctl.health import INTERVAL, BeatReporter, HealthServer, Recorder

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger("celeryctl.worker")

#: Task events are sent in batches at most this many seconds late (or at once when
#: :data:`EVENT_BATCH` of them are waiting).  Celery sends the buffered task events on the next
#: turn of the event loop, which is one message per event or two at a few hundred tasks/s: that
#: cost a third of the worker's CPU per task on a 2-CPU machine (``benchmarks/bench_submit.py``).
#: Batched, monitors still see every task (Celery's own ``task.multi`` messages), 0.1 s later.
EVENT_FLUSH_INTERVAL = 0.1
EVENT_BATCH = 100

#: Seconds the running tasks get to finish after SIGTERM.  Kubernetes sends SIGKILL 30 s after
#: SIGTERM (``terminationGracePeriodSeconds``): 25 s leaves 5 s to re-queue what is left and close
#: the connection.  Raise both together for longer tasks (``docker stop`` waits 10 s: ``-t 30``).
DEFAULT_GRACE = 25.0
#: Where the grace travels from ``prepare`` to the step: a key of the app's configuration.
GRACE_KEY = "celeryctl_grace"
#: How often, while stopping, the worker looks whether its tasks are done.
POLL = 0.05

#: Where the health record's path travels from ``prepare`` to the beat process.
HEALTH_KEY = "celeryctl_health_file"

_STEPS: list[type] = []
#: The running worker's health record (one worker per process), set by :func:`open_health`.
_HEALTH: list[Recorder] = []


def install(app: Celery, *, batching: bool, grace: float, health_file: Path | None = None, beat: bool = False) -> None:
    """Add the steps to ``app``'s worker (idempotent); event batching only when asked."""
    batched, reject, term, report = _steps()
    app.conf[GRACE_KEY] = grace
    consumer = app.steps["consumer"]
    consumer.add(reject)
    consumer.add(term)
    consumer.add(report)
    if batching:
        consumer.add(batched)
    if health_file is not None:
        app.conf[HEALTH_KEY] = str(health_file)
        if beat:
            _beat_reports(app)
    _delayed_delivery_fails_over()
    _replies_survive_a_leader_election()


def open_health(path: Path, node: str, *, beat: bool = False, port: int | None = None) -> tuple[Recorder, HealthServer | None]:
    """The worker's record (``starting``, written now; rewritten every second once the consumer
    runs) and its HTTP endpoints (served now: a port in use is an error before the worker starts,
    and /livez answers while the worker starts)."""
    from celeryctl.errors import PortInUseError
    from celeryctl.files import make_dir

    recorder = Recorder(path, node, beat=beat, on_error=lambda m: logger.warning("health record: %s", m))
    make_dir(recorder.path.parent)  # not private: the record holds no secret, and probes may run as another user
    recorder.write()
    server = None
    if port is not None:
        try:
            server = HealthServer(recorder, port)
        except OSError as exc:
            raise PortInUseError(
                f"--health-port {port}: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}",
                "choose another port, or leave --health-port out and probe the record: celeryctl probe worker",
            ) from None
        server.start()
    _HEALTH[:] = [recorder]
    return recorder, server


def close_health(recorder: Recorder, server: HealthServer | None) -> None:
    """The worker stopped: the record says so, the endpoints close."""
    if server is not None:
        server.stop()
    recorder.stop()
    _HEALTH.clear()


def _beat_reports(app: Celery) -> None:
    """In the beat process of ``worker --beat``: report each pass of the schedule and each task sent."""
    from celery.signals import beat_embedded_init

    def on_beat_start(sender: Any, **_kwargs: Any) -> None:
        path = sender.app.conf.get(HEALTH_KEY)
        if not path:
            return
        reporter = BeatReporter(Path(path))
        scheduler = sender.scheduler
        tick, apply_async = scheduler.tick, scheduler.apply_async

        def reported_tick(*args: Any, **kwargs: Any) -> Any:
            next_in = tick(*args, **kwargs)
            reporter.ticked(next_in or 0.0)
            return next_in

        def reported_apply_async(entry: Any, *args: Any, **kwargs: Any) -> Any:
            result = apply_async(entry, *args, **kwargs)
            reporter.sent(str(getattr(entry, "name", entry)))
            return result

        scheduler.tick, scheduler.apply_async = reported_tick, reported_apply_async

    beat_embedded_init.connect(on_beat_start, weak=False, dispatch_uid="celeryctl-beat-health")


def _delayed_delivery_fails_over() -> None:
    """Make Celery's native delayed delivery step treat a ``;`` URL list as one broker.

    Celery (5.5-5.7) sets the delay topology up once per URL of the list, each with 1 + 3 + 5 s of
    retries: with one member of a cluster down, a worker that reconnects after a failover waits
    ~15 s in that step before it consumes again.  The members of a list are one cluster (the
    topology is cluster-wide), so one failover connection over the whole list is enough.
    """
    try:
        from celery.worker.consumer.delayed_delivery import DelayedDelivery
    except ImportError:  # a Celery without native delayed delivery
        return
    if getattr(DelayedDelivery, "_celeryctl_one_broker", False):
        return
    split = DelayedDelivery._validate_broker_urls

    def one_broker(self: Any, broker_urls: Any) -> set[str]:
        urls = split(self, broker_urls)
        ordered = broker_urls.split(";") if isinstance(broker_urls, str) else list(broker_urls)
        return {";".join(u for u in ordered if u in urls)} if len(urls) > 1 else urls

    DelayedDelivery._validate_broker_urls = one_broker
    DelayedDelivery._celeryctl_one_broker = True


#: How long a worker retries a task's result that the broker refused (nack) while the reply
#: queue's quorum elects a new leader (a member died): about a second or two here.
NACK_RETRY_SECONDS = 15.0


def _replies_survive_a_leader_election() -> None:
    """Retry an rpc:// result the broker nacked instead of failing the task that produced it.

    On a cluster the reply queue of ``submit --wait`` is a quorum queue; for the moment its
    leader's node is dead and no new leader is elected, RabbitMQ nacks what is published to it.
    kombu retries connection errors, not nacks, so Celery recorded a task that had succeeded as
    FAILURE ("Exception raised outside body"), and its redelivery later as SUCCESS: the client
    counted a failure that was not one.  The same publish is retried until it is confirmed.
    """
    try:
        from amqp.exceptions import MessageNacked
        from celery.backends.rpc import RPCBackend
        from kombu.exceptions import OperationalError
    except ImportError:
        return
    if getattr(RPCBackend, "_celeryctl_retries_nacks", False):
        return
    store = RPCBackend.store_result

    def store_result(self: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + NACK_RETRY_SECONDS
        while True:
            try:
                return store(self, *args, **kwargs)
            except OperationalError as exc:
                if not isinstance(exc.__cause__, MessageNacked) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    RPCBackend.store_result = store_result
    RPCBackend._celeryctl_retries_nacks = True


def _steps() -> list[type]:
    if not _STEPS:
        _STEPS.extend(_build())
    return _STEPS


def _build() -> list[type]:  # noqa: C901 - three small classes that need Celery imported
    from celery import bootsteps

    class BatchedTaskEvents(bootsteps.StartStopStep):  # type: ignore[misc]
        """Task events in batches: at most :data:`EVENT_FLUSH_INTERVAL` late."""

        requires = ("celery.worker.consumer.events:Events",)

        def start(self, c: Any) -> None:
            dispatcher = c.event_dispatcher
            if dispatcher is None or c.hub is None:  # no event loop: Celery sends them at once
                return
            hub = c.hub
            pending = [False]

            def flush() -> None:
                pending[0] = False
                if c.event_dispatcher is dispatcher:
                    dispatcher.flush()

            def on_buffered() -> None:
                if not pending[0]:
                    pending[0] = True
                    hub.call_later(EVENT_FLUSH_INTERVAL, flush)

            dispatcher.buffer_limit = EVENT_BATCH
            dispatcher.on_send_buffered = on_buffered

        def stop(self, c: Any) -> None:
            self._flush(c)

        def shutdown(self, c: Any) -> None:
            self._flush(c)

        @staticmethod
        def _flush(c: Any) -> None:
            dispatcher = c.event_dispatcher
            if dispatcher is not None:
                from amqp.exceptions import AMQPError
                from kombu.exceptions import OperationalError

                try:
                    dispatcher.flush()
                except (OperationalError, AMQPError, OSError):  # the connection is gone; Celery re-buffers
                    pass

    class RejectUndecodable(bootsteps.Step):  # type: ignore[misc]
        """A message the worker cannot decode is rejected (not re-queued), with one log line.

        Celery's ``Consumer.on_decode_error`` acknowledges it, which drops it for good; rejected,
        a quorum queue dead-letters it to ``QUEUE.dead``, where ``celeryctl dead`` shows it.
        Replaced on the consumer when the blueprint is built, before the Tasks step passes it
        to the task consumer.  (Unknown task names and messages that are not Celery's protocol
        Celery rejects already.)
        """

        def __init__(self, c: Any, **kwargs: Any) -> None:
            super().__init__(c, **kwargs)

            def on_decode_error(message: Any, exc: Exception) -> None:
                logger.error(
                    "rejected a message on queue %s that cannot be decoded (content type %s): %s: %s",
                    _queue_of(c, message),
                    message.content_type,
                    type(exc).__name__,
                    exc,
                )
                message.reject_log_error(logger, c.connection_errors)

            c.on_decode_error = on_decode_error

    class GracefulTerm(bootsteps.StartStopStep):  # type: ignore[misc]
        """SIGTERM: stop taking tasks, let the running ones finish within the grace, re-queue the rest.

        Celery's own SIGTERM is a warm shutdown without a bound (a long task holds the worker
        until the container is killed); its soft shutdown (``worker_soft_shutdown_timeout``)
        sleeps the whole timeout inside the signal handler, the event loop stopped, and ends
        with exit 1.  Here the handler only schedules the work on the event loop: the worker
        keeps acknowledging the tasks that finish, exits as soon as none runs (a warm
        shutdown, exit 0), and at the end of the grace cancels the rest — their messages,
        never acknowledged (late acks), go back to the queue — and exits 0 too.
        """

        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, c: Any, **kwargs: Any) -> None:
            super().__init__(c, **kwargs)
            self.deadline: float | None = None

        def start(self, c: Any) -> None:
            if c.hub is None:  # solo/threads pools: no event loop; Celery's warm shutdown stays
                return
            from celery import platforms

            main = os.getpid()
            grace = float(c.app.conf.get(GRACE_KEY, DEFAULT_GRACE))

            def on_sigterm(*_args: Any) -> None:
                if os.getpid() != main:  # a pool process that inherited the handler
                    os._exit(0)
                if self.deadline is not None:
                    return  # already stopping: the first SIGTERM's grace runs on
                from celery.apps.worker import safe_say
                from celery.worker import state

                self.deadline = time.monotonic() + grace
                for recorder in _HEALTH:
                    recorder.update(state="shutting down")
                safe_say("worker: Warm shutdown (MainProcess)")  # Celery's own line, as for Ctrl-C
                safe_say(
                    f"worker: {len(state.active_requests)} running task(s) get up to {grace:g} s to finish, "
                    "then they are re-queued"
                )
                c.hub.call_soon(self._stopping, c)

            platforms.signals["SIGTERM"] = on_sigterm

        def _stopping(self, c: Any) -> None:
            if c.task_consumer is not None:  # take no new task; the prefetched ones return unacked
                try:
                    c.task_consumer.cancel()
                except c.connection_errors + c.channel_errors:  # the broker is gone: nothing to cancel
                    pass
            self._wait(c)

        def _wait(self, c: Any) -> None:
            from celery.worker import state

            assert self.deadline is not None
            if not state.active_requests:
                state.should_stop = 0
            elif time.monotonic() >= self.deadline:
                names = ", ".join(sorted({r.name for r in state.active_requests}))
                logger.warning("grace over: re-queuing %d task(s) still running (%s)", len(state.active_requests), names)
                c.cancel_active_requests()
                c.controller.exitcode = 0
                state.should_terminate = 0
            else:
                c.hub.call_later(POLL, self._wait, c)

    class HealthReport(bootsteps.StartStopStep):  # type: ignore[misc]
        """The health record follows the consumer: ``ready`` once the task consumer consumes (this
        step starts after it), a tick from the event loop every :data:`INTERVAL` with what it
        sees, ``reconnecting`` when the connection is lost (the consumer restarts its steps),
        ``shutting down`` when the worker stops."""

        requires = ("celery.worker.consumer.tasks:Tasks",)

        def start(self, c: Any) -> None:
            if not _HEALTH:
                return
            recorder = _HEALTH[0]
            recorder.loop_driven = c.hub is not None
            # a tick, not an update: the heartbeat starts now, not at the last turn of the loop
            # before a reconnection (or at start-up), which would read as a frozen loop
            if recorder.fields.get("state") != "shutting down":
                recorder.tick(state="ready", **_observe(c))
            recorder.start()
            if c.hub is not None:
                c.hub.call_repeatedly(INTERVAL, lambda: recorder.tick(**_observe(c)))

        def stop(self, c: Any) -> None:
            if not _HEALTH:
                return
            from celery.bootsteps import CLOSE, TERMINATE
            from celery.worker import state

            stopping = c.blueprint.state in (CLOSE, TERMINATE) or state.should_stop is not None or (
                state.should_terminate is not None
            )
            if _HEALTH[0].fields.get("state") == "shutting down":
                stopping = True
            _HEALTH[0].update(
                state="shutting down" if stopping else "reconnecting", connected=False, consuming=False, queues=[]
            )

        def shutdown(self, c: Any) -> None:
            if _HEALTH:
                _HEALTH[0].update(state="shutting down", connected=False, consuming=False, queues=[])

    return [BatchedTaskEvents, RejectUndecodable, GracefulTerm, HealthReport]


def _observe(c: Any) -> dict[str, Any]:
    """What the health record says about the consumer, read on the event loop."""
    from celery.worker import state

    tags = getattr(c.task_consumer, "_active_tags", None) or {}
    connection = c.connection
    return {
        "connected": bool(connection is not None and connection.connected),
        "consuming": bool(tags),
        "queues": sorted(str(q) for q in tags),
        "active": len(state.active_requests),
        "processed": sum(state.total_count.values()),
    }


def _queue_of(c: Any, message: Any) -> str:
    """The queue a message came from: by its consumer tag, else its routing key."""
    info = getattr(message, "delivery_info", None) or {}
    tag = info.get("consumer_tag")
    tags = getattr(c.task_consumer, "_active_tags", None) or {}
    for queue, queue_tag in tags.items():
        if queue_tag == tag:
            return str(queue)
    return str(info.get("routing_key") or "?")
