"""Enqueue tasks with publisher confirms, and wait for their results.

"Submitted" means the broker confirmed the message (publisher confirms), never merely that it
was written to a socket.  Waiting reports every state change through a callback of
:class:`Event` objects (plus a periodic tick), so that a display can be drawn without this module
knowing anything about it.

``send_many`` publishes N copies of a task on one channel in confirm mode without waiting for
each confirm: confirms are collected asynchronously in batches, which is what makes ``--count``
fast.  The messages are the ordinary Celery protocol-2 messages that ``apply_async`` sends
(built by ``app.amqp.create_task_message``), so any Celery worker runs them.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from celeryctl.broker import START_HINT, ensure_reachable
from celeryctl.errors import (
    AccessRefusedError,
    CeleryctlError,
    ExitCode,
    TimeoutError_,
    UnreachableError,
    UsageError,
)
from celeryctl.settings import Settings, mask_url

if TYPE_CHECKING:
    from celery import Celery

READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
CONNECT_TIMEOUT = 2.0


class TaskFailedError(CeleryctlError):
    """The task ran and failed (exit 1)."""

    exit_code = ExitCode.FAILED
    code = "task_failed"


# --------------------------------------------------------------------------- arguments


def parse_value(text: str) -> Any:
    """A JSON literal when ``text`` parses as one (``1``, ``true``, ``[1,2]``), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_args(raw: list[str] | None) -> list[Any]:
    return [parse_value(a) for a in raw or []]


def parse_kwargs(pairs: list[str] | None, kwargs_json: str | None) -> dict[str, Any]:
    """Merge ``--kwargs JSON`` and ``-k KEY=VALUE`` (the latter win)."""
    kwargs: dict[str, Any] = {}
    if kwargs_json:
        try:
            loaded = json.loads(kwargs_json)
        except ValueError as exc:
            raise UsageError(
                f"--kwargs is not valid JSON: {exc}", "write a JSON object, e.g. --kwargs '{\"x\": 1}'"
            ) from None
        if not isinstance(loaded, dict):
            raise UsageError(
                f"--kwargs must be a JSON object, got {type(loaded).__name__}", "e.g. --kwargs '{\"x\": 1}'"
            )
        kwargs.update(loaded)
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"-k expects KEY=VALUE, got '{pair}'", "e.g. -k seconds=2 -k name=alice")
        kwargs[key.strip()] = parse_value(value)
    return kwargs


def parse_eta(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--eta '{text}' is not an ISO 8601 time", "e.g. --eta 2030-01-01T12:00:00+00:00") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def check_priority(priority: int | None) -> None:
    if priority is not None and not 0 <= priority <= 9:
        raise UsageError(f"--priority must be between 0 and 9, got {priority}")


# --------------------------------------------------------------------------- the client


def prepare_client(app: Celery) -> None:
    """Publisher confirms on, no publish retries, short connect timeout (fail fast, fail clearly)."""
    conf = app.conf
    options = dict(conf.broker_transport_options or {})
    options["confirm_publish"] = True
    conf.broker_transport_options = options
    conf.broker_connection_timeout = CONNECT_TIMEOUT
    conf.broker_connection_retry = False
    conf.broker_connection_max_retries = 0
    conf.task_publish_retry = False


def check_broker(app: Celery) -> None:
    """Fast network check (raw AMQP handshake) so that a broker that is down fails in milliseconds."""
    ensure_reachable(
        str(app.conf.broker_url), timeout=CONNECT_TIMEOUT, login=False, suffix="; nothing was submitted", hint=START_HINT
    )


def open_client(settings: Settings, task: str, *, wait: bool = False) -> tuple[Celery, str]:
    """Load and configure the app for submitting, resolve the task name, check the broker.

    Returns ``(app, full task name)``.  Everything that can be refused is refused here, before
    anything is published.
    """
    from celeryctl.celeryapp import load_app, resolve_task_name

    app = load_app(settings.app, settings)
    prepare_client(app)
    name = resolve_task_name(app, task)
    if wait:
        check_waitable(app, name)
    check_broker(app)
    return app, name


def check_waitable(app: Celery, name: str) -> None:
    """Refuse ``--wait`` for a task whose result nobody will ever send."""
    from celery.backends.base import DisabledBackend

    if isinstance(app.backend, DisabledBackend):
        raise UsageError(
            f"app '{app.main}' has no result backend, so --wait cannot see the task finish",
            "set one: --backend rpc:// (env CELERYCTL_RESULT_BACKEND), or submit without --wait",
        )
    if app.tasks[name].ignore_result:
        raise UsageError(
            f"task {name} ignores its result (ignore_result=True), so --wait cannot see it finish",
            "submit it without --wait",
        )


def _publish_error(app: Celery, exc: BaseException) -> CeleryctlError:
    """Turn a kombu/py-amqp error raised while publishing into a clear celeryctl error."""
    url = mask_url(str(app.conf.broker_url))
    name = type(exc).__name__
    text = str(exc)
    if name in ("AccessRefused", "NotAllowed") or "ACCESS_REFUSED" in text or "NOT_ALLOWED" in text:
        return AccessRefusedError(
            f"the broker at {url} refused access: {text}; nothing was submitted",
            "check the user, password and vhost in the broker URL",
        )
    return UnreachableError(
        f"could not submit to the broker at {url}: {name}: {text}; the task was not confirmed",
        "check that the broker runs: celeryctl broker status",
    )


def _library_errors() -> tuple[type[BaseException], ...]:
    import amqp.exceptions
    import kombu.exceptions

    return (kombu.exceptions.OperationalError, amqp.exceptions.AMQPError, OSError, TimeoutError)


def send(
    app: Celery,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    countdown: float | None = None,
    eta: datetime | None = None,
    queue: str | None = None,
    priority: int | None = None,
) -> Any:
    """Publish one task and return its ``AsyncResult`` once the broker confirmed it."""
    options: dict[str, Any] = {"retry": False}
    if countdown is not None:
        options["countdown"] = countdown
    if eta is not None:
        options["eta"] = eta
    if queue:
        options["queue"] = queue
    if priority is not None:
        options["priority"] = priority
    try:
        return app.tasks[name].apply_async(args=args, kwargs=kwargs, **options)
    except _library_errors() as exc:
        raise _publish_error(app, exc) from exc


def consumers(app: Celery, name: str, queue: str | None = None) -> tuple[str, int | None]:
    """The queue a task goes to and how many consumers it has (None when it cannot be told).

    Waiting on a queue that no worker consumes would wait forever: the CLI warns about it.
    """
    try:
        qname = queue or app.amqp.router.route({}, name)["queue"].name
    except Exception:  # noqa: BLE001 - routing is the app's; no warning rather than an error
        return queue or "", None
    try:
        with app.connection_for_write() as conn:
            channel = conn.channel()
            try:
                _name, _messages, count = channel.queue_declare(queue=qname, passive=True)
            finally:
                try:
                    channel.close()
                except Exception:  # noqa: BLE001 - a 404 already closed it
                    pass
            return qname, int(count)
    except Exception as exc:  # noqa: BLE001
        # 404: the queue does not exist, so nobody consumes it
        return qname, 0 if getattr(exc, "code", None) == 404 or "NOT_FOUND" in str(exc) else None


# --------------------------------------------------------------------------- waiting


@dataclass
class Event:
    """A state change of a task (``tick`` is True for the periodic ones with no news)."""

    task_id: str
    state: str
    elapsed: float
    meta: Any = None
    tick: bool = False

    @property
    def current(self) -> float | None:
        return _num(self.meta, "current")

    @property
    def total(self) -> float | None:
        return _num(self.meta, "total")


def _num(meta: Any, key: str) -> float | None:
    if isinstance(meta, dict) and isinstance(meta.get(key), (int, float)):
        return float(meta[key])
    return None


@dataclass
class Outcome:
    task_id: str
    name: str
    state: str
    seconds: float
    result: Any = None
    exc_type: str | None = None
    exc_message: str | None = None
    traceback: str | None = None
    states: list[str] = field(default_factory=list)
    retries: int = 0

    @property
    def ok(self) -> bool:
        return self.state == "SUCCESS"

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "task_id": self.task_id,
            "task": self.name,
            "state": self.state,
            "seconds": round(self.seconds, 3),
            "states": self.states,
            "retries": self.retries,
        }
        if self.ok:
            doc["result"] = self.result
        else:
            doc["exception"] = {"type": self.exc_type, "message": self.exc_message}
        return doc


def failure_error(outcome: Outcome, *, verbose: bool = False) -> TaskFailedError:
    details: dict[str, object] = {"task_id": outcome.task_id, "task": outcome.name, "state": outcome.state}
    details["exception"] = {"type": outcome.exc_type, "message": outcome.exc_message}
    if verbose and outcome.traceback:
        details["log_tail"] = outcome.traceback.rstrip().splitlines()
    return TaskFailedError(
        f"task {outcome.name}[{outcome.task_id}] failed: {outcome.exc_type}: {outcome.exc_message}",
        None if verbose else "run with -v to see the remote traceback",
        details=details,
    )


def wait(
    app: Celery,
    result: Any,
    *,
    name: str = "",
    timeout: float | None = None,
    on_event: Callable[[Event], None] | None = None,
    tick: float = 0.1,
) -> Outcome:
    """Wait for one task, reporting each state message; raise TimeoutError_ when ``timeout`` expires."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    started = time.monotonic()
    task_id = str(result.id)
    report = on_event or (lambda _e: None)
    seen: list[str] = []
    retries = 0
    last: dict[str, Any] = {"state": "PENDING", "meta": None}
    report(Event(task_id, "PENDING", 0.0))

    def on_message(body: dict[str, Any]) -> None:
        nonlocal retries
        if body.get("task_id") not in (None, task_id):
            return
        state = str(body.get("status") or "PENDING")
        if state == "RETRY":
            retries += 1
        if not seen or seen[-1] != state:
            seen.append(state)
        last["state"], last["meta"] = state, body.get("result")
        report(Event(task_id, state, time.monotonic() - started, body.get("result")))

    def on_interval() -> None:
        report(Event(task_id, last["state"], time.monotonic() - started, last["meta"], tick=True))

    try:
        if getattr(app.backend, "is_async", False):
            result.get(
                timeout=timeout,
                propagate=False,
                interval=tick,
                on_message=on_message,
                on_interval=on_interval,
            )
        else:  # backends that store results (database, files): poll them
            _poll(result, timeout, tick, on_message, on_interval)
    except CeleryTimeout:
        raise TimeoutError_(
            f"task {name or ''}[{task_id}] did not finish within {timeout:g} s (last state {last['state']}); "
            "it may still be running",
            f"wait longer with --timeout, or check later with the id {task_id}",
            details={"task_id": task_id, "state": last["state"]},
        ) from None
    except _library_errors() as exc:
        raise UnreachableError(
            f"lost the broker while waiting for task {task_id}: {type(exc).__name__}: {exc}",
            "the task may still run; check the broker: celeryctl broker status",
        ) from exc
    state = str(result.state)
    if not seen or seen[-1] != state:
        seen.append(state)
    outcome = Outcome(task_id, name, state, time.monotonic() - started, states=seen, retries=retries)
    if state == "SUCCESS":
        outcome.result = result.result
    else:
        error = result.result
        outcome.exc_type = type(error).__name__ if isinstance(error, BaseException) else state
        outcome.exc_message = str(error) if error is not None else ""
        outcome.traceback = result.traceback
    report(Event(task_id, state, outcome.seconds, outcome.result if outcome.ok else None))
    return outcome


def _poll(
    result: Any,
    timeout: float | None,
    tick: float,
    on_message: Callable[[dict[str, Any]], None],
    on_interval: Callable[[], None],
) -> None:
    from celery.exceptions import TimeoutError as CeleryTimeout

    deadline = None if timeout is None else time.monotonic() + timeout
    previous: tuple[str, str] | None = None
    while True:
        state, meta = str(result.state), result.info
        if (state, repr(meta)) != previous:
            previous = (state, repr(meta))
            on_message({"task_id": result.id, "status": state, "result": meta})
        if state in READY_STATES:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise CeleryTimeout("timed out")
        on_interval()
        time.sleep(tick)


# --------------------------------------------------------------------------- many


@dataclass
class Batch:
    ids: list[str]
    name: str
    publish_seconds: float
    succeeded: int = 0
    failed: int = 0
    seconds: float = 0.0  # publish + wait, when waited

    @property
    def submitted(self) -> int:
        return len(self.ids)

    def to_dict(self, *, waited: bool, with_ids: bool = False) -> dict[str, Any]:
        seconds = self.seconds if waited else self.publish_seconds
        done = (self.succeeded + self.failed) if waited else self.submitted
        doc: dict[str, Any] = {
            "task": self.name,
            "submitted": self.submitted,
            "succeeded": self.succeeded if waited else None,
            "failed": self.failed if waited else None,
            "seconds": round(seconds, 3),
            "rate": round(done / seconds, 1) if seconds > 0 else None,
            "publish_seconds": round(self.publish_seconds, 3),
            "publish_rate": round(self.submitted / self.publish_seconds, 1) if self.publish_seconds > 0 else None,
        }
        if with_ids:
            doc["ids"] = self.ids
        return doc


class _Confirms:
    """Publisher-confirm bookkeeping: delivery tags published and not yet settled by the broker."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()  # tags in publish order
        self.settled: set[int] = set()  # tags settled out of order, still in ``pending``
        self.nacked = 0

    def _settle(self, tag: int, multiple: bool) -> int:
        n = 0
        if multiple:
            while self.pending and self.pending[0] <= tag:
                t = self.pending.popleft()
                if t in self.settled:
                    self.settled.discard(t)
                else:
                    n += 1
        elif tag not in self.settled:
            self.settled.add(tag)
            n = 1
        while self.pending and self.pending[0] in self.settled:
            self.settled.remove(self.pending.popleft())
        return n

    def on_ack(self, tag: int, multiple: bool = False) -> None:
        self._settle(tag, multiple)

    def on_nack(self, tag: int, multiple: bool = False) -> None:
        self.nacked += self._settle(tag, multiple)

    @property
    def unconfirmed(self) -> int:
        return len(self.pending) - len(self.settled)


def send_many(
    app: Celery,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    count: int,
    *,
    countdown: float | None = None,
    eta: datetime | None = None,
    queue: str | None = None,
    priority: int | None = None,
    on_published: Callable[[int], None] | None = None,
    window: int = 2000,
    confirm_timeout: float = 30.0,
) -> Batch:
    """Publish ``count`` copies of a task; return once the broker confirmed every one of them.

    Messages go out without waiting for each confirm; at most ``window`` may be unconfirmed at
    a time, and the broker's acks are read between publishes.
    """
    from celery.utils import uuid
    from kombu import Producer
    from kombu.common import maybe_declare
    from kombu.serialization import dumps

    report = on_published or (lambda _n: None)
    started = time.monotonic()
    task = app.tasks[name]
    route: dict[str, Any] = {}
    if queue:
        route["queue"] = queue
    if priority is not None:
        route["priority"] = priority
    options = app.amqp.router.route(dict(task._get_exec_options(), **route), name, args, kwargs, task)
    q = options.pop("queue")
    exchange = options.pop("exchange", None)
    routing_key = options.pop("routing_key", None)
    exchange_type = options.pop("exchange_type", None) or getattr(q.exchange, "type", "direct")
    if (not exchange or not routing_key) and exchange_type == "direct":
        exchange, routing_key = "", q.name
    elif exchange is None:
        exchange = q.exchange.name
        routing_key = routing_key or q.routing_key or app.conf.task_default_routing_key
    exchange_name = getattr(exchange, "name", exchange) or ""
    prio = options.get("priority")
    delivery_mode = getattr(q.exchange, "delivery_mode", None) or app.conf.task_default_delivery_mode
    delivery_mode = {"persistent": 2, "transient": 1}.get(delivery_mode, delivery_mode)

    first_id = uuid()
    template = app.amqp.create_task_message(
        first_id,
        name,
        args,
        kwargs,
        countdown,
        eta,
        reply_to=app.thread_oid,
        create_sent_event=False,
        ignore_result=bool(task.ignore_result),
    )
    headers0, properties0, body, _sent = template
    content_type, content_encoding, payload = dumps(body, serializer=app.conf.task_serializer)
    reply_to = properties0.get("reply_to") or ""

    confirms = _Confirms()
    ids: list[str] = []
    conn = None
    try:
        conn = app.connection_for_write()
        conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
        channel = conn.default_channel
        maybe_declare(q(channel), channel)
        producer = Producer(channel, auto_declare=False)
        if not task.ignore_result:
            app.backend.on_task_call(producer, first_id)
        channel.confirm_select()
        channel.events["basic_ack"].add(confirms.on_ack)
        channel.events["basic_nack"].add(confirms.on_nack)
        publish = channel._basic_publish  # the raw publish: confirms are collected below
        transport_conn = conn.connection
        tag = 0

        def drain(block_until: int) -> None:
            """Read confirms; block while more than ``block_until`` are unconfirmed."""
            deadline = time.monotonic() + confirm_timeout
            while True:
                try:
                    transport_conn.drain_events(timeout=0 if confirms.unconfirmed <= block_until else 1.0)
                except TimeoutError:
                    if confirms.unconfirmed <= block_until:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError_(
                        f"the broker did not confirm {confirms.unconfirmed} of {len(ids)} messages "
                        f"within {confirm_timeout:g} s",
                        "the broker may be overloaded or blocked (memory or disk alarm)",
                    )

        for i in range(count):
            task_id = first_id if i == 0 else uuid()
            headers = dict(headers0)
            headers["id"] = task_id
            headers["root_id"] = task_id
            msg = channel.prepare_message(
                payload,
                prio,
                content_type,
                content_encoding,
                headers,
                {"delivery_mode": delivery_mode, "correlation_id": task_id, "reply_to": reply_to},
            )
            publish(msg, exchange=exchange_name, routing_key=routing_key)
            tag += 1
            confirms.pending.append(tag)
            ids.append(task_id)
            if tag % 256 == 0:
                drain(window)
                report(tag - confirms.unconfirmed)
        drain(0)
        report(count)
    except CeleryctlError:
        raise
    except _library_errors() as exc:
        raise _publish_error(app, exc) from exc
    finally:
        try:
            if conn is not None:
                conn.release()
        except Exception:  # noqa: BLE001 - closing after a failure
            pass
    if confirms.nacked:
        raise UnreachableError(
            f"the broker refused {confirms.nacked} of {count} messages (negative confirms)",
            "the broker may be out of resources; check its log",
        )
    return Batch(ids, name, time.monotonic() - started)


def _rpc_consumer(app: Celery) -> Any:
    """The rpc:// backend's reply-queue consumer, when it already listens (``send_many`` started it)."""
    from celery.backends.rpc import RPCBackend

    backend = app.backend
    if not isinstance(backend, RPCBackend):
        return None
    consumer = getattr(backend.result_consumer, "_consumer", None)
    return consumer if consumer is not None and hasattr(consumer, "callbacks") else None


def _drain_rpc(
    app: Celery,
    consumer: Any,
    finished: dict[str, str],
    wanted: set[str],
    timeout: float | None,
    on_message: Callable[[dict[str, Any]], None],
    on_interval: Callable[[], None],
) -> None:
    """Read the rpc:// reply queue in bulk until every task of the batch reported a final state.

    ``ResultSet.join_native`` hands each reply through per-result bookkeeping and yields the
    CPU twice per message (``sleep(0)``, for green threads): with N tasks that is 2N replies
    (STARTED and the result), a quarter of the client's CPU on a 2-CPU machine, taken from the
    worker.  Here each reply is one callback that counts it.
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
        while len(finished) < len(wanted):
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
    finished: dict[str, str] = {}
    wanted = set(batch.ids)

    def on_message(body: dict[str, Any]) -> None:
        tid = body.get("task_id")
        state = body.get("status")
        if tid in wanted and state in READY_STATES and tid not in finished:
            finished[tid] = str(state)
            if state == "SUCCESS":
                batch.succeeded += 1
            else:
                batch.failed += 1

    def on_interval() -> None:
        report(batch.succeeded, batch.failed)

    results = ResultSet([app.AsyncResult(i) for i in batch.ids])
    try:
        consumer = _rpc_consumer(app)
        if consumer is not None:
            _drain_rpc(app, consumer, finished, wanted, timeout, on_message, on_interval)
        elif getattr(app.backend, "is_async", False):
            results.join_native(
                timeout=timeout, propagate=False, interval=0.1, on_message=on_message, on_interval=on_interval
            )
        else:  # backends that store results: poll them, one by one
            done = [0]

            def on_result(_task_id: str, _value: Any) -> None:
                done[0] += 1
                report(done[0], 0)

            results.join(timeout=timeout, propagate=False, interval=0.1, callback=on_result)
    except CeleryTimeout:
        raise TimeoutError_(
            f"{len(batch.ids) - len(finished)} of {len(batch.ids)} tasks did not finish within {timeout:g} s; "
            "they may still be running",
            "wait longer with --timeout",
            details={"succeeded": batch.succeeded, "failed": batch.failed},
        ) from None
    except _library_errors() as exc:
        raise UnreachableError(f"lost the broker while waiting: {type(exc).__name__}: {exc}") from exc
    # Results that arrived before we listened are in the results' cache, not in on_message.
    for r in results.results:
        if r.id not in finished:
            state = r.state
            finished[r.id] = state
            if state == "SUCCESS":
                batch.succeeded += 1
            else:
                batch.failed += 1
    report(batch.succeeded, batch.failed)
    batch.seconds = batch.publish_seconds + (time.monotonic() - started)
    return batch
