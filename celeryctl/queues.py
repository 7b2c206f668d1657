"""``celeryctl queues`` and ``celeryctl purge``: queue depths, and emptying one queue.

Depths come from :func:`celeryctl.broker.list_queues` (every queue of the vhost through the
management API or, on celeryctl's own node, rabbitmqctl; else the app's queues and the ones
asked for).  Returns data and raises
:mod:`celeryctl.errors`; nothing prints.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeryctl.broker import (
    QueueReport,
    app_queue_names,
    close_quietly,
    connect,
    ensure_reachable,
    list_queues,
    parse,
    queue_depth,
)
from celeryctl.celeryapp import app_broker, named_app
from celeryctl.errors import AccessRefusedError, CeleryctlError

if TYPE_CHECKING:
    from celeryctl.settings import Settings


def queues_report(settings: Settings, names: Iterable[str] = (), *, include_internal: bool = False) -> QueueReport:
    """:func:`~celeryctl.broker.list_queues` for the resolved broker; on another broker the app's
    queues (``celery`` without ``-A``) and ``names``.  ``missing`` lists only ``names`` not found."""
    app = named_app(settings)
    url = app_broker(app) if app is not None else settings.broker
    default = app_queue_names(app) if app is not None else ["celery"]
    asked = list(names)
    # rabbitmqctl reads the node as its admin (and the API may log in as another user): the
    # URL's own user must be able to log in first (exit 7), or a wrong password would list
    # queues it may not see.
    ensure_reachable(url)
    report = list_queues(url, settings, [*default, *asked], include_internal=include_internal)
    report.missing = [m for m in report.missing if m in asked]
    return report


@dataclass
class Purged:
    queue: str
    removed: int  # ready messages removed
    vhost: str

    def to_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "removed": self.removed, "vhost": self.vhost}


def purge(url: str, queue: str) -> Purged:
    """Remove every ready message from ``queue``; say how many were removed.

    Messages delivered to a consumer and not yet acknowledged are not removed (RabbitMQ keeps
    them; they return to the queue if the consumer goes away).  A missing queue is
    :class:`~celeryctl.errors.QueueNotFoundError`.
    """
    import pika.exceptions

    queue_depth(url, queue)  # a clear error for a missing queue
    conn = connect(url)
    try:
        channel = conn.channel()
        try:
            ok = channel.queue_purge(queue)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 403:
                raise AccessRefusedError(
                    f"not allowed to purge queue '{queue}': {exc.reply_text}",
                    "the broker user needs read permission on the queue",
                ) from None
            raise CeleryctlError(f"purge of '{queue}' failed: {exc.reply_text}") from None
        return Purged(queue, int(ok.method.message_count), parse(url).vhost)
    finally:
        close_quietly(conn)
