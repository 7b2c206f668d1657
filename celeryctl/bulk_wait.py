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


def _rpc_consumer(app: Celery, first_id: str) -> Any:
    """The rpc:// backend's reply-queue consumer (started on the app's reply queue when it is not yet)."""
    from celery.backends.rpc import RPCBackend

    backend = app.backend
    if not isinstance(backend, RPCBackend):
        return None
    # Every task of the batch replies to the app's one reply queue (declared by send_many before
    # it published); consuming from it for one id consumes for all, with nothing kept per task.
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

    def callback(body: Any, _message: Any) -> None:
        if isinstance(body, dict):
            on_message(body)

    previous = consumer.callbacks
    consumer.callbacks = [callback]
    connection = app.backend.result_consumer._connection
    deadline = None if timeout is None else time.monotonic() + timeout
    next_tick = time.monotonic() + 0.1
    try:
        while waiting:
            try:
                connection.drain_events(timeout=0.1)
            except TimeoutError:  # socket.timeout
                pass
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
