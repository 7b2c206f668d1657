"""Many copies of one task, published inside a window of unconfirmed messages (waiting for them in
bulk is :mod:`celeryctl.bulk_wait`).

``send_many`` publishes N copies of a task on one channel in confirm mode without waiting for
each confirm: confirms are collected asynchronously in batches, which is what makes ``--count``
fast.  The messages are the ordinary Celery protocol-2 messages that ``apply_async`` sends
(built by ``app.amqp.create_task_message``), so any Celery worker runs them.

This module reaches into Celery's and kombu's private API (``Task._get_exec_options``, the
channel's raw ``_basic_publish``); :mod:`celeryctl.submit` is the
single task through the public one, and lends this module its error mapping.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celeryctl.broker import close_quietly
from celeryctl.errors import CeleryctlError, ConfigError, InterruptedError_, TimeoutError_, UnreachableError
from celeryctl.submit import CONNECT_TIMEOUT, check_arguments, library_errors, publish_error

if TYPE_CHECKING:
    from celery import Celery, Task

#: Confirms are read (and progress reported) every this many messages.
DRAIN_EVERY = 256


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


class Confirms:
    """Publisher-confirm bookkeeping: delivery tags published and not yet settled by the broker."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()  # tags in publish order
        self.settled: set[int] = set()  # tags settled out of order, still in ``pending``
        self.nacked = 0
        self.nacked_tags: set[int] = set()
        self.reported = 0  # tags up to here were handed out by ``newly_confirmed``

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
        unsettled = self.unsettled_tags() if multiple else {tag}
        n = self._settle(tag, multiple)
        self.nacked += n
        self.nacked_tags.update(t for t in unsettled if t <= tag)

    def unsettled_tags(self) -> set[int]:
        return set(self.pending) - self.settled

    def confirmed_tags(self, published: int) -> list[int]:
        """Tags 1..``published`` the broker acknowledged (neither pending nor refused), in order."""
        open_tags = self.unsettled_tags() | self.nacked_tags
        return [t for t in range(1, published + 1) if t not in open_tags]

    def newly_confirmed(self, published: int) -> list[int]:
        """Tags acknowledged since the last call, up to the first one still open, in order."""
        front = self.pending[0] - 1 if self.pending else published
        tags = [t for t in range(self.reported + 1, front + 1) if t not in self.nacked_tags]
        self.reported = max(self.reported, front)
        return tags

    def rest_confirmed(self, published: int) -> list[int]:
        """Acknowledged tags ``newly_confirmed`` has not handed out (acked out of order, at the end)."""
        return [t for t in self.confirmed_tags(published) if t > self.reported]

    @property
    def unconfirmed(self) -> int:
        return len(self.pending) - len(self.settled)


class IdsFile:
    """Confirmed task ids appended to a file (mode 0600), one a line, as the broker confirms them.

    Appended, not rewritten: a re-run after a failure adds to what the first run confirmed, so
    the file's line count is what is confirmed in all.
    """

    def __init__(self, path: Path) -> None:
        from celeryctl.files import open_log

        self.path = Path(path)
        open_log(self.path, append=True, doing="write the ids file").close()  # checked before anything is sent

    def write(self, ids: Iterable[str]) -> None:
        from celeryctl.files import open_log

        data = "".join(f"{i}\n" for i in ids).encode()
        if not data:
            return
        try:
            with open_log(self.path, append=True, doing="write the ids file") as fh:
                fh.write(data)
        except OSError as exc:  # disk full, file removed midway: not the broker's fault
            raise ConfigError(
                f"cannot write the ids file {self.path}: {exc.strerror or exc}",
                "check the disk and the path; the broker confirmed the tasks all the same",
            ) from None


# --------------------------------------------------------------------------- publishing


@dataclass(frozen=True)
class _Route:
    """Where the copies go, resolved once as ``apply_async`` would resolve it for each."""

    queue: Any  # kombu.Queue
    exchange: str
    routing_key: str
    priority: int | None
    delivery_mode: int


@dataclass(frozen=True)
class _Template:
    """The serialized message every copy shares; only the task id headers differ."""

    first_id: str
    headers: dict[str, Any]
    content_type: str
    content_encoding: str
    payload: Any
    reply_to: str


def _route(
    app: Celery,
    task: Task,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    queue: str | None,
    priority: int | None,
    delay: float | None = None,
) -> _Route:
    """Where every copy goes; a delay of a second or more on a quorum queue goes through the broker's
    delay topology, as ``apply_async`` sends it (:mod:`celeryctl.delayed`)."""
    from celeryctl import delayed

    wanted: dict[str, Any] = {}
    if queue:
        wanted["queue"] = queue
    if priority is not None:
        wanted["priority"] = priority
    options = app.amqp.router.route(dict(task._get_exec_options(), **wanted), name, args, kwargs, task)
    q = options.pop("queue")
    exchange = options.pop("exchange", None)
    routing_key = options.pop("routing_key", None)
    exchange_type = options.pop("exchange_type", None) or getattr(q.exchange, "type", "direct")
    if (not exchange or not routing_key) and exchange_type == "direct":
        exchange, routing_key = "", q.name
    elif exchange is None:
        exchange = q.exchange.name
        routing_key = routing_key or q.routing_key or app.conf.task_default_routing_key
    native = delayed.route(app, q, delay)
    if native is not None:
        exchange, routing_key = native
    delivery_mode = getattr(q.exchange, "delivery_mode", None) or app.conf.task_default_delivery_mode
    return _Route(
        queue=q,
        exchange=getattr(exchange, "name", exchange) or "",
        routing_key=routing_key,
        priority=options.get("priority"),
        delivery_mode={"persistent": 2, "transient": 1}.get(delivery_mode, delivery_mode),
    )


def _template(
    app: Celery,
    task: Task,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    countdown: float | None,
    eta: datetime | None,
) -> _Template:
    from celery.utils import uuid
    from kombu.serialization import dumps

    first_id = uuid()
    headers, properties, body, _sent = app.amqp.create_task_message(
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
    content_type, content_encoding, payload = dumps(body, serializer=app.conf.task_serializer)
    return _Template(first_id, headers, content_type, content_encoding, payload, properties.get("reply_to") or "")


def _confirm_channel(app: Celery, conn: Any, task: Task, route: _Route, first_id: str, confirms: Confirms) -> Any:
    """The connection's channel in confirm mode, the queue declared, the result consumer listening."""
    from kombu import Producer
    from kombu.common import maybe_declare

    conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
    channel = conn.default_channel
    maybe_declare(route.queue(channel), channel)
    if not task.ignore_result:
        app.backend.on_task_call(Producer(channel, auto_declare=False), first_id)
    channel.confirm_select()
    channel.events["basic_ack"].add(confirms.on_ack)
    channel.events["basic_nack"].add(confirms.on_nack)
    return channel


def _drain(transport_conn: Any, confirms: Confirms, block_until: int, published: int, confirm_timeout: float) -> None:
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
                f"the broker did not confirm {confirms.unconfirmed} of {published} messages "
                f"within {confirm_timeout:g} s",
                "the broker may be overloaded or blocked (memory or disk alarm)",
            )


def _publish(
    channel: Any,
    transport_conn: Any,
    route: _Route,
    template: _Template,
    count: int,
    confirms: Confirms,
    *,
    window: int,
    confirm_timeout: float,
    report: Callable[[int], None],
    ids: list[str],
) -> list[str]:
    """Publish ``count`` copies with the raw publish; return their ids once every one is confirmed.

    ``ids`` is filled as messages go out (id i has delivery tag i + 1), so that a caller interrupted
    half-way knows which were published.
    """
    from celery.utils import uuid

    publish = channel._basic_publish  # the raw publish: confirms are collected by _drain
    prepare = channel.prepare_message
    exchange, routing_key, prio, delivery_mode = route.exchange, route.routing_key, route.priority, route.delivery_mode
    headers0, reply_to = template.headers, template.reply_to
    content_type, content_encoding, payload = template.content_type, template.content_encoding, template.payload
    pending = confirms.pending
    tag = 0
    for i in range(count):
        task_id = template.first_id if i == 0 else uuid()
        headers = dict(headers0)
        headers["id"] = task_id
        headers["root_id"] = task_id
        msg = prepare(
            payload,
            prio,
            content_type,
            content_encoding,
            headers,
            {"delivery_mode": delivery_mode, "correlation_id": task_id, "reply_to": reply_to},
        )
        # Booked before the publish: an interrupt in between counts the message as unconfirmed.
        tag += 1
        pending.append(tag)
        ids.append(task_id)
        publish(msg, exchange=exchange, routing_key=routing_key)
        if tag % DRAIN_EVERY == 0:
            _drain(transport_conn, confirms, window, tag, confirm_timeout)
            report(tag - confirms.unconfirmed)
    _drain(transport_conn, confirms, 0, tag, confirm_timeout)
    report(count)
    return ids


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
    ids_file: Path | None = None,
    window: int = 2000,
    confirm_timeout: float = 30.0,
) -> Batch:
    """Publish ``count`` copies of a task; return once the broker confirmed every one of them.

    Messages go out without waiting for each confirm; at most ``window`` may be unconfirmed at
    a time, and the broker's acks are read between publishes.  The ids the broker confirmed are
    appended to ``ids_file`` as the confirms arrive (the rest of them when the run stops).
    """
    from celeryctl import delayed

    check_arguments(app, name, args, kwargs)
    sink = IdsFile(ids_file) if ids_file is not None else None
    started = time.monotonic()
    task = app.tasks[name]
    if countdown is not None or eta is not None:
        countdown, eta = delayed.fit(app, delayed.target(app, name, queue), countdown, eta)
    route = _route(app, task, name, args, kwargs, queue, priority, delayed.seconds(countdown, eta))
    template = _template(app, task, name, args, kwargs, countdown, eta)
    confirms = Confirms()
    ids: list[str] = []

    def report(n: int) -> None:
        if sink is not None:
            sink.write(ids[t - 1] for t in confirms.newly_confirmed(len(ids)))
        if on_published is not None:
            on_published(n)

    conn = None
    try:
        conn = app.connection_for_write()
        channel = _confirm_channel(app, conn, task, route, template.first_id, confirms)
        _publish(
            channel,
            conn.connection,
            route,
            template,
            count,
            confirms,
            window=window,
            confirm_timeout=confirm_timeout,
            report=report,
            ids=ids,
        )
    except CeleryctlError as exc:
        exc.details.update(_progress(confirms, ids, count, sink))
        raise
    except library_errors() as exc:
        progress = _progress(confirms, ids, count, sink)
        error = publish_error(app, exc)
        error.message = error.message.replace("the task was not confirmed", _confirmed_text(progress))
        error.details.update(progress)
        raise error from exc
    except KeyboardInterrupt:
        if conn is not None:
            _settle_before_leaving(conn, confirms, len(ids))
        progress = _progress(confirms, ids, count, sink)
        raise InterruptedError_(
            f"stopped publishing {name}: {_confirmed_text(progress)}",
            None,
            details=progress,
        ) from None
    finally:
        if conn is not None:
            close_quietly(conn)
    if confirms.nacked:
        raise UnreachableError(
            f"the broker refused {confirms.nacked} of {count} messages (negative confirms)",
            "the broker may be out of resources; check its log",
            details=_progress(confirms, ids, count, sink),
        )
    return Batch(ids, name, time.monotonic() - started)


def _settle_before_leaving(conn: Any, confirms: Confirms, published: int, seconds: float = 1.0) -> None:
    """Read the confirms already on their way (for at most ``seconds``), so the count is exact."""
    deadline = time.monotonic() + seconds
    stop: tuple[type[BaseException], ...] = (KeyboardInterrupt, *library_errors())
    try:
        while confirms.unconfirmed and time.monotonic() < deadline:
            try:
                conn.connection.drain_events(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            except TimeoutError:
                pass
    # A second Ctrl-C, or a connection that is gone: report what is known now.
    except stop:
        pass


def _progress(confirms: Confirms, ids: list[str], count: int, sink: IdsFile | None = None) -> dict[str, Any]:
    """How far a run got: published, confirmed by the broker (with their ids), not confirmed.

    The confirmed ids not yet in ``sink`` are written there now; a file that cannot take them is
    said in ``ids_file_error`` (the broker's failure stays the one reported).
    """
    tags = confirms.confirmed_tags(len(ids))
    progress: dict[str, Any] = {
        "requested": count,
        "published": len(ids),
        "confirmed": len(tags),
        "unconfirmed": len(ids) - len(tags),
        "ids": [ids[t - 1] for t in tags],
    }
    if sink is not None:
        progress["ids_file"] = str(sink.path)
        try:
            sink.write(ids[t - 1] for t in confirms.rest_confirmed(len(ids)))
        except CeleryctlError as exc:
            progress["ids_file_error"] = exc.message
    return progress


def _confirmed_text(progress: dict[str, Any]) -> str:
    text = f"the broker confirmed {progress['confirmed']} of the {progress['requested']} tasks"
    if progress["unconfirmed"]:
        text += f" ({progress['unconfirmed']} more published, not confirmed: they may or may not be queued)"
    if progress.get("ids_file") and not progress.get("ids_file_error"):
        return text + f" (their ids are in {progress['ids_file']})"
    return text + " (--json lists their ids)"
