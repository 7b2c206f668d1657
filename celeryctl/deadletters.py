"""Dead-lettered tasks: list them, put them back on their queue, or drop them.

A quorum queue that celeryctl declares dead-letters to ``NAME.dead`` (:mod:`celeryctl.topology`)
a task delivered ``max_deliveries`` times (reason ``delivery_limit``), one a worker rejected
(``rejected``: garbage, ``Reject(requeue=False)``) or one that expired (``expired``).  RabbitMQ
records why in the ``x-death`` / ``x-first-death-*`` headers.

The dead-letter queues are classic durable queues, so reading them loses and reorders nothing:
messages are fetched with ``basic.get`` and no ack, and every one not replayed or dropped goes
back to its place when the channel closes (a classic queue requeues in order and counts nothing).
Replay republishes to the queue the task died in with publisher confirms and acks the dead copy
only once the broker confirmed the new one: at least once (a lost connection between the two
leaves the task in both queues, never in neither).

Each message has a ``key``: its Celery task id, or ``sha1:`` and 12 hex digits of its body for a
message that is not a Celery task.  Returns data and raises :mod:`celeryctl.errors`; nothing prints.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celeryctl import topology
from celeryctl.broker import close_quietly, connect, parse, queue_depths
from celeryctl.errors import AccessRefusedError, CeleryctlError, QueueNotFoundError

if TYPE_CHECKING:
    from celeryctl.broker import BrokerUrl
    from celeryctl.settings import Settings

DEFAULT_LIMIT = 100
#: Headers RabbitMQ adds when it dead-letters or redelivers; a replayed task starts without them.
_DEATH_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count")


@dataclass
class DeadLetter:
    """One message of a dead-letter queue, with what is known of it."""

    key: str  # the task id, or sha1:<12 hex> of the body for a message that is not a Celery task
    dead_queue: str
    position: int  # 1-based place in its dead-letter queue when it was read
    id: str | None = None
    task: str | None = None
    args: str | None = None  # Celery's argsrepr, else the arguments' repr from the body
    kwargs: str | None = None
    reason: str | None = None  # delivery_limit, rejected, expired, maxlen
    deliveries: int | None = None
    deaths: int = 0  # how often it was dead-lettered (x-death counts; more than 1 after a replay)
    died_at: datetime | None = None
    source: str | None = None  # the queue it died in (where replay puts it back)
    size: int = 0

    @property
    def is_task(self) -> bool:
        return self.id is not None and self.task is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "id": self.id,
            "task": self.task,
            "args": self.args,
            "kwargs": self.kwargs,
            "reason": self.reason,
            "deliveries": self.deliveries,
            "deaths": self.deaths,
            "died_at": self.died_at.isoformat() if self.died_at else None,
            "queue": self.source,
            "dead_queue": self.dead_queue,
            "position": self.position,
            "size": self.size,
            "is_task": self.is_task,
        }


@dataclass
class DeadQueue:
    name: str
    messages: int  # every message it held when read


@dataclass
class Listing:
    """What ``celeryctl dead`` shows: the dead-letter queues read, and up to ``limit`` messages."""

    vhost: str
    queues: list[DeadQueue]
    tasks: list[DeadLetter]
    limit: int

    @property
    def count(self) -> int:
        return sum(q.messages for q in self.queues)

    def to_dict(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "queues": [{"queue": q.name, "count": q.messages} for q in self.queues],
            "count": self.count,
            "shown": len(self.tasks),
            "limit": self.limit,
            "tasks": [t.to_dict() for t in self.tasks],
        }


@dataclass
class Outcome:
    """What ``dead replay`` / ``dead drop`` did: ``done`` (replayed or dropped), what was asked for
    and not found, and what could not be replayed (left in its dead-letter queue)."""

    action: str  # "replay" or "drop"
    queues: list[str]
    done: list[DeadLetter] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    failed: list[tuple[DeadLetter, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.not_found and not self.failed

    def to_dict(self) -> dict[str, Any]:
        past = "replayed" if self.action == "replay" else "dropped"
        return {
            "queues": self.queues,
            past: [t.key for t in self.done],
            "count": len(self.done),
            "tasks": [t.to_dict() for t in self.done],
            "not_found": self.not_found,
            "failed": [{"key": t.key, "error": why} for t, why in self.failed],
        }


# --------------------------------------------------------------------------- which queues


def dead_name(queue: str) -> str:
    """``celery`` -> ``celery.dead``; a dead-letter queue's own name is kept."""
    return queue if topology.is_dead_queue(queue) else topology.dead_queue(queue)


def resolve_queues(settings: Settings, queues: Iterable[str] = ()) -> tuple[str, list[str], bool]:
    """The broker URL, the dead-letter queues to read and whether they were named.

    Named (``QUEUE`` / ``-Q``): their dead-letter queues.  None named: those of the ``-A`` app's
    queues (``celery`` without ``-A``, as ``celeryctl queues`` does); those that do not exist are
    skipped.
    """
    from celeryctl.broker import app_queue_names
    from celeryctl.celeryapp import app_broker, named_app

    app = named_app(settings)
    url = app_broker(app) if app is not None else settings.broker
    named = list(queues)
    names = named or (app_queue_names(app) if app is not None else ["celery"])
    return url, list(dict.fromkeys(dead_name(n) for n in names)), bool(named)


def _existing(conn: Any, url: str | BrokerUrl, names: list[str], explicit: bool) -> list[DeadQueue]:
    found: list[DeadQueue] = []
    for depth in queue_depths(conn, names):
        if depth.exists:
            found.append(DeadQueue(depth.name, int(depth.ready or 0)))
        elif explicit:
            raise QueueNotFoundError(
                f"dead-letter queue '{depth.name}' does not exist on vhost '{parse(url).vhost}'",
                "celeryctl declares QUEUE.dead with each quorum queue it creates; list the queues with: celeryctl queues",
            )
    return found


# --------------------------------------------------------------------------- reading a message


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _body_fields(props: Any, body: bytes) -> dict[str, Any]:
    """Fields of a JSON body: protocol 2 ``[args, kwargs, embed]``, protocol 1 ``{id, task, ...}``."""
    if props.content_type not in (None, "application/json"):
        return {}
    try:
        data = json.loads(body)
    except ValueError:  # not JSON (or not UTF-8): a message that is not a Celery task
        return {}
    if isinstance(data, list) and len(data) == 3 and isinstance(data[0], list) and isinstance(data[1], dict):
        return {"args": repr(tuple(data[0])), "kwargs": repr(data[1])}
    if isinstance(data, dict) and "task" in data:
        return {
            "id": data.get("id"),
            "task": data.get("task"),
            "args": repr(tuple(data.get("args") or ())),
            "kwargs": repr(data.get("kwargs") or {}),
        }
    return {}


def read_message(
    props: Any, body: bytes, dead_queue: str, position: int, max_deliveries: int | None = None
) -> DeadLetter:
    """What a dead-lettered message says of itself.

    ``deliveries``: ``x-delivery-count`` + 1 when the message carries it.  On RabbitMQ 3.10.8 a
    dead-lettered message carries none (measured: neither ``delivery_limit`` nor ``rejected``); one
    dead-lettered for its delivery limit was delivered the queue's limit, which is ``max_deliveries``
    (celeryctl's setting: RabbitMQ refuses to redeclare a queue with another limit); else unknown.
    """
    headers: dict[str, Any] = dict(props.headers or {})
    fields = _body_fields(props, body)
    task_id = _text(headers.get("id")) or _text(fields.get("id"))
    task = _text(headers.get("task")) or _text(fields.get("task"))
    deaths = [d for d in headers.get("x-death") or [] if isinstance(d, dict)]
    last = deaths[0] if deaths else {}  # RabbitMQ keeps the most recent death first
    reason = _text(last.get("reason")) or _text(headers.get("x-first-death-reason"))
    count = _int(headers.get("x-delivery-count"))
    if count is not None:
        deliveries: int | None = count + 1
    elif reason == "delivery_limit":
        deliveries = max_deliveries
    else:
        deliveries = None
    died_at = last.get("time")
    key = task_id if task_id and task else "sha1:" + hashlib.sha1(body).hexdigest()[:12]
    return DeadLetter(
        key=key,
        dead_queue=dead_queue,
        position=position,
        id=task_id,
        task=task,
        args=_text(headers.get("argsrepr")) or fields.get("args"),
        kwargs=_text(headers.get("kwargsrepr")) or fields.get("kwargs"),
        reason=reason,
        deliveries=deliveries,
        deaths=sum(_int(d.get("count")) or 0 for d in deaths),
        died_at=died_at if isinstance(died_at, datetime) else None,
        source=_text(last.get("queue")) or _text(headers.get("x-first-death-queue")),
        size=len(body),
    )


# --------------------------------------------------------------------------- the scan

#: ``visit(channel, delivery_tag, properties, body, letter)`` -> False to stop reading.
Visit = Callable[[Any, int, Any, bytes, DeadLetter], bool]


def _scan(conn: Any, queue: DeadQueue, visit: Visit, *, confirm: bool = False, max_deliveries: int | None) -> None:
    """Fetch the messages of ``queue`` (at most those it held when counted) without acking; what
    ``visit`` does not ack goes back to its place when the channel closes."""
    import pika.exceptions

    channel = conn.channel()
    try:
        if confirm:
            channel.confirm_delivery()
        for position in range(1, queue.messages + 1):
            try:
                method, props, body = channel.basic_get(queue.name, auto_ack=False)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 403:
                    raise AccessRefusedError(
                        f"not allowed to read queue '{queue.name}': {exc.reply_text}",
                        "the broker user needs read permission on the queue",
                    ) from None
                raise CeleryctlError(f"reading '{queue.name}' failed: {exc.reply_text}") from None
            if method is None:  # emptied meanwhile (another reader)
                break
            letter = read_message(props, body, queue.name, position, max_deliveries)
            if not visit(channel, method.delivery_tag, props, body, letter):
                break
    finally:
        close_quietly(channel)  # every message not acked returns to its place, in order


def list_dead(
    url: str | BrokerUrl,
    names: list[str],
    *,
    explicit: bool = False,
    limit: int = DEFAULT_LIMIT,
    max_deliveries: int | None = None,
) -> Listing:
    """Up to ``limit`` messages of the dead-letter queues ``names``; nothing is removed or moved."""
    conn = connect(url)
    try:
        queues = _existing(conn, url, names, explicit)
        tasks: list[DeadLetter] = []

        def keep(channel: Any, tag: int, props: Any, body: bytes, letter: DeadLetter) -> bool:
            tasks.append(letter)
            return len(tasks) < limit

        for queue in queues:
            if len(tasks) >= limit:
                break
            _scan(conn, queue, keep, max_deliveries=max_deliveries)
    finally:
        close_quietly(conn)
    return Listing(parse(url).vhost, queues, tasks, limit)


def replay(
    url: str | BrokerUrl,
    names: list[str],
    keys: Iterable[str] | None,
    *,
    explicit: bool = False,
    max_deliveries: int | None = None,
) -> Outcome:
    """Put the messages ``keys`` (None: every one) back on the queue each died in.

    Each is published to the default exchange with the queue's name as routing key (mandatory,
    persistent, its headers without the death headers) and acked in the dead-letter queue only
    once the broker confirmed it.  A message with no recorded queue, or whose queue is gone, stays.
    """
    import pika
    import pika.exceptions

    def republish(channel: Any, tag: int, props: Any, body: bytes, letter: DeadLetter) -> str | None:
        if not letter.source:
            return "RabbitMQ recorded no queue it died in (x-death); it was not dead-lettered"
        headers = {k: v for k, v in (props.headers or {}).items() if not k.startswith(_DEATH_HEADERS)}
        properties = pika.BasicProperties(
            content_type=props.content_type,
            content_encoding=props.content_encoding,
            headers=headers,
            delivery_mode=2,
            priority=props.priority,
            correlation_id=props.correlation_id,
            reply_to=props.reply_to,
            message_id=props.message_id,
            timestamp=props.timestamp,
            type=props.type,
            app_id=props.app_id,
        )
        try:
            channel.basic_publish("", letter.source, body, properties, mandatory=True)
        except pika.exceptions.UnroutableError:
            return f"queue '{letter.source}' does not exist"
        except pika.exceptions.NackError:
            return f"the broker refused it (queue '{letter.source}' full or unavailable)"
        channel.basic_ack(tag)
        return None

    return _act(url, names, keys, "replay", republish, explicit=explicit, max_deliveries=max_deliveries)


def drop(
    url: str | BrokerUrl,
    names: list[str],
    keys: Iterable[str] | None,
    *,
    explicit: bool = False,
    max_deliveries: int | None = None,
) -> Outcome:
    """Remove the messages ``keys`` (None: every one) from the dead-letter queues ``names``."""

    def ack(channel: Any, tag: int, props: Any, body: bytes, letter: DeadLetter) -> str | None:
        channel.basic_ack(tag)
        return None

    return _act(url, names, keys, "drop", ack, explicit=explicit, max_deliveries=max_deliveries)


def _act(
    url: str | BrokerUrl,
    names: list[str],
    keys: Iterable[str] | None,
    action: str,
    do: Callable[[Any, int, Any, bytes, DeadLetter], str | None],
    *,
    explicit: bool,
    max_deliveries: int | None,
) -> Outcome:
    wanted = None if keys is None else list(dict.fromkeys(keys))
    conn = connect(url)
    try:
        queues = _existing(conn, url, names, explicit)
        outcome = Outcome(action, [q.name for q in queues])
        seen: set[str] = set()

        def visit(channel: Any, tag: int, props: Any, body: bytes, letter: DeadLetter) -> bool:
            if wanted is not None and letter.key not in wanted:
                return True
            seen.add(letter.key)
            problem = do(channel, tag, props, body, letter)
            if problem is None:
                outcome.done.append(letter)
            else:
                outcome.failed.append((letter, problem))
            return True  # every copy: a task replayed and dead again, identical garbage

        for queue in queues:
            _scan(conn, queue, visit, confirm=action == "replay", max_deliveries=max_deliveries)
    finally:
        close_quietly(conn)
    outcome.not_found = [k for k in wanted or () if k not in seen]
    return outcome


def incomplete_error(outcome: Outcome) -> CeleryctlError:
    """Exit 1 naming what was asked for and not done (after the rest was done)."""
    past = "replayed" if outcome.action == "replay" else "dropped"
    parts = []
    if outcome.not_found:
        parts.append("not found: " + ", ".join(outcome.not_found))
    if outcome.failed:
        parts.append("; ".join(f"{t.key}: {why}" for t, why in outcome.failed))
    return CeleryctlError(
        f"{len(outcome.done)} {past}; " + "; ".join(parts),
        "list the dead-lettered tasks and their keys with: celeryctl dead"
        + (" (messages that failed stay in the dead-letter queue)" if outcome.failed else ""),
        code="dead_not_done",
        details=outcome.to_dict(),
    )
