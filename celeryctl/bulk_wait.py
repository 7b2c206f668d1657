"""Waiting for a batch of tasks (``submit --count N --wait``): every result read in bulk.

With the rpc:// backend the reply queue is drained directly, one callback per reply, instead of
``ResultSet.join_native`` (which yields the CPU twice per reply); other backends use Celery's own
joins.  Reaches into the rpc:// backend's private consumer, as :mod:`celeryctl.bulk` does into
kombu's channel.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celeryctl.bulk import Batch
from celeryctl.errors import InterruptedError_, TimeoutError_, UnreachableError
from celeryctl.submit import READY_STATES, library_errors

if TYPE_CHECKING:
    from celery import Celery


#: An rpc:// reply queue on a cluster is a quorum queue that RabbitMQ deletes this long after its
#: last consumer left (a quorum queue cannot be auto-delete): time enough to fail over.
REPLY_EXPIRES_MS = 120_000


def replicate_replies(app: Celery) -> bool:
    """On a cluster (a broker URL list), make the rpc:// reply queue a replicated quorum queue.

    rpc://'s own reply queue is a classic queue on the member the client first connected to: when
    that member dies, so does the queue, and every result a worker sends until the client
    reconnected elsewhere is dropped (``submit --wait`` would wait for ever).  A quorum queue keeps
    them on the surviving members.  Whether another backend or a single URL: nothing changes.
    """
    from celery.backends.rpc import RPCBackend

    from celeryctl.broker import parse

    backend = app.backend
    if type(backend) is not RPCBackend or len(parse(str(app.conf.broker_url)).hosts) < 2:
        return False

    class ReplicatedReplies(RPCBackend):  # type: ignore[misc]
        @property
        def binding(self) -> Any:
            return self.Queue(
                self.oid,
                self.exchange,
                self.oid,
                durable=True,
                auto_delete=False,
                queue_arguments={"x-queue-type": "quorum", "x-expires": REPLY_EXPIRES_MS},
            )

    app._backend = ReplicatedReplies(app=app)  # Celery's own setter: the app's backend from now on
    return True


def _rpc_consumer(app: Celery, first_id: str) -> Any:
    """The rpc:// backend's reply-queue consumer (started on the app's reply queue when it is not yet)."""
    from celery.backends.rpc import RPCBackend

    backend = app.backend
    if not isinstance(backend, RPCBackend):
        return None
    # Every task of the batch replies to the app's one reply queue (declared by send_many before
    # it published); consuming from it for one id consumes for all, with nothing kept per task.
    # A replicated reply queue (a cluster: submit.replicate_replies) is read with acks, so that a
    # reply in flight when the member dies is delivered again after the failover.
    replicated = type(backend) is not RPCBackend
    if replicated and backend.result_consumer._consumer is None:
        backend.result_consumer.start(first_id, no_ack=False)
    backend.result_consumer.consume_from(first_id)
    consumer = getattr(backend.result_consumer, "_consumer", None)
    return consumer if consumer is not None and hasattr(consumer, "callbacks") else None


def _drain_rpc(
    app: Celery,
    consumer: Any,
    waiting: set[str],
    timeout: float | None,
    on_message: Callable[[dict[str, Any]], None],
    on_interval: Callable[[], None],
) -> None:
    """Read the rpc:// reply queue in bulk until every task of the batch reported a final state.

    ``ResultSet.join_native`` hands each reply through per-result bookkeeping and yields the
    CPU twice per message (``sleep(0)``, for green threads): with N tasks that is 2N replies
    (STARTED and the result), a quarter of the client's CPU on a 2-CPU machine, taken from the
    worker.  Here each reply is one callback that counts it; ``on_message`` takes a task out of
    ``waiting`` when it reports a final state, and nothing else is kept per task.
    """
    from celery.exceptions import TimeoutError as CeleryTimeout

    results = app.backend.result_consumer

    def callback(body: Any, message: Any) -> None:
        if isinstance(body, dict):
            on_message(body)
        if not results._no_ack:
            message.ack()

    previous = consumer.callbacks
    consumer.callbacks = [callback]
    deadline = None if timeout is None else time.monotonic() + timeout
    next_tick = time.monotonic() + 0.1
    try:
        while waiting:
            try:
                # Celery 5.7+ reconnects here (to the next host of a URL list) and subscribes
                # again with a new consumer, which then gets this callback.
                results.drain_events(timeout=0.1)
            except TimeoutError:  # socket.timeout
                pass
            except RuntimeError as exc:  # Celery's "retry limit exceeded": no host of the list answered
                raise UnreachableError(
                    f"lost the broker while waiting and could not reconnect: {exc}",
                    "the tasks stay queued or running; check the broker: celeryctl broker status",
                ) from exc
            if results._consumer is not None and results._consumer is not consumer:
                consumer = results._consumer
                consumer.callbacks = [callback]
            now = time.monotonic()
            if now >= next_tick:
                on_interval()
                next_tick = now + 0.1
            if deadline is not None and now > deadline:
                raise CeleryTimeout("timed out")
    finally:
        consumer.callbacks = previous


def wait_many(
    app: Celery,
    batch: Batch,
    *,
    timeout: float | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Batch:
    """Wait until every task of ``batch`` finished; count successes and failures."""
    from celery.exceptions import TimeoutError as CeleryTimeout
    from celery.result import ResultSet

    started = time.monotonic()
    report = on_progress or (lambda _d, _f: None)
    # Only the ids still running are kept (memory flat in N beyond the batch's own ids): no
    # AsyncResult per task on the rpc:// path, no result kept, counts only.
    waiting = set(batch.ids)

    def finish(tid: str, state: str) -> None:
        waiting.discard(tid)
        if state == "SUCCESS":
            batch.succeeded += 1
        else:
            batch.failed += 1

    def on_message(body: dict[str, Any]) -> None:
        tid = body.get("task_id")
        state = body.get("status")
        if tid in waiting and state in READY_STATES:
            finish(str(tid), str(state))

    def on_interval() -> None:
        report(batch.succeeded, batch.failed)

    try:
        consumer = _rpc_consumer(app, batch.ids[0]) if batch.ids else None
        if consumer is not None:
            _drain_rpc(app, consumer, waiting, timeout, on_message, on_interval)
        elif getattr(app.backend, "is_async", False):
            results = ResultSet([app.AsyncResult(i) for i in batch.ids])
            results.join_native(
                timeout=timeout, propagate=False, interval=0.1, on_message=on_message, on_interval=on_interval
            )
            # Results that arrived before we listened are in the results' cache, not in on_message.
            for r in results.results:
                if r.id in waiting:
                    finish(r.id, r.state)
        else:  # backends that store results: poll them, one by one

            def on_result(task_id: str, value: Any) -> None:
                finish(task_id, "FAILURE" if isinstance(value, BaseException) else "SUCCESS")
                report(batch.succeeded, batch.failed)

            ResultSet([app.AsyncResult(i) for i in batch.ids]).join(
                timeout=timeout, propagate=False, interval=0.1, callback=on_result
            )
    except CeleryTimeout:
        raise TimeoutError_(
            f"{len(waiting)} of {len(batch.ids)} tasks did not finish within {timeout:g} s; they may still be running",
            "wait longer with --timeout",
            details={"succeeded": batch.succeeded, "failed": batch.failed},
        ) from None
    except library_errors() as exc:
        raise UnreachableError(
            f"lost the broker while waiting: {type(exc).__name__}: {exc} (the broker had confirmed all "
            f"{batch.submitted} tasks; {batch.succeeded + batch.failed} finished)",
            "the tasks stay queued or running; check the broker: celeryctl broker status",
            details={
                "requested": batch.submitted,
                "published": batch.submitted,
                "confirmed": batch.submitted,
                "unconfirmed": 0,
                "succeeded": batch.succeeded,
                "failed": batch.failed,
            },
        ) from exc
    except KeyboardInterrupt:
        unfinished = len(waiting)
        raise InterruptedError_(
            f"stopped waiting: {batch.succeeded} succeeded, {batch.failed} failed, {unfinished} of the "
            f"{batch.submitted} submitted tasks not finished yet (they stay queued or running)",
            None,
            details={
                "submitted": batch.submitted,
                "succeeded": batch.succeeded,
                "failed": batch.failed,
                "unfinished": unfinished,
                "ids": batch.ids,
            },
        ) from None
    report(batch.succeeded, batch.failed)
    batch.seconds = batch.publish_seconds + (time.monotonic() - started)
    return batch
