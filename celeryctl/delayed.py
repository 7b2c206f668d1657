"""Countdown and ETA tasks on quorum queues: Celery's native delayed delivery, for one task or many.

A worker holding an ETA task in memory (what Celery does on classic queues) would block under
quorum queues' static prefetch, so on quorum queues bound to a topic exchange Celery sends such a
task through the broker instead: to the exchange ``celery_delayed_27`` with a routing key that
spells the delay in binary (``kombu.transport.native_delayed_delivery.calculate_routing_key``),
through 28 queues with message TTLs, and back to its own queue when the time comes.  ``send``
(``apply_async``) does that by itself; ``bulk.send_many`` builds its messages itself and routes them
with :func:`route` the same way.

Two gaps are closed here: that topology exists only once a worker declared it (publishing to a
missing ``celery_delayed_27`` is a channel error, and a queue no worker bound would lose the
message at the end of its delay), so :func:`prepare` declares it and binds the target queue, as
the worker does; and kombu refuses a delay under one second (``int(0.5)`` is 0), so :func:`fit`
makes such a delay one second (never earlier than asked).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

#: The entry of the delay topology (kombu's ``level_name(MAX_LEVEL)``).
DELAYED_EXCHANGE = "celery_delayed_27"
DELIVERY_EXCHANGE = "celery_delayed_delivery"


def seconds(countdown: float | None, eta: datetime | None) -> float | None:
    """The delay asked for, in seconds from now (None: no delay; negative: an ETA in the past)."""
    if eta is not None:
        return (eta - datetime.now(timezone.utc)).total_seconds()
    return countdown


def target(app: Celery, name: str, queue: str | None) -> Any:
    """The kombu ``Queue`` that task ``name`` goes to (``--queue``, else the app's routing)."""
    return app.amqp.router.route({"queue": queue} if queue else {}, name)["queue"]


def native(app: Celery, queue: Any) -> bool:
    """Whether a delayed task for ``queue`` travels through the broker, as ``apply_async`` decides it.

    Celery does so when any of the app's queues is a quorum queue and the target's exchange is
    not direct.
    """
    from celery.utils.quorum_queues import detect_quorum_queues

    return bool(detect_quorum_queues(app, "amqp")[0]) and getattr(queue.exchange, "type", "direct") != "direct"


def fit(app: Celery, queue: Any, countdown: float | None, eta: datetime | None) -> tuple[float | None, datetime | None]:
    """``(countdown, eta)`` to publish: a native delay under one second becomes one second."""
    delay = seconds(countdown, eta)
    if delay is not None and 0 < delay < 1 and native(app, queue):
        return 1.0, None
    return countdown, eta


def route(app: Celery, queue: Any, delay: float | None) -> tuple[str, str] | None:
    """``(exchange, routing key)`` of a copy delayed ``delay`` seconds, or None to publish it as usual."""
    if delay is None or int(delay) < 1 or not native(app, queue):
        return None
    from kombu.transport.native_delayed_delivery import calculate_routing_key

    return DELAYED_EXCHANGE, calculate_routing_key(int(delay), queue.routing_key)


def prepare(app: Celery, name: str, queue: str | None) -> str | None:
    """Make sure a delayed task for ``name`` arrives; a warning to show when it cannot travel natively.

    Declares the delay topology when it is missing (as a worker does when it starts) and binds the
    target queue to it, so that a countdown sent before any worker ran still reaches its queue.
    A quorum queue on a direct exchange cannot be delayed by the broker: the warning says what
    follows.
    """
    from celeryctl.submit import CONNECT_TIMEOUT, library_errors, publish_error

    q = target(app, name, queue)
    from celery.utils.quorum_queues import detect_quorum_queues

    if not detect_quorum_queues(app, "amqp")[0]:
        return None
    if not native(app, q):
        return (
            f"queue '{q.name}' is a quorum queue on the direct exchange '{q.exchange.name}': the broker cannot "
            "delay the task, so a worker holds it in memory until its time and may serve nothing else meanwhile "
            "(a topic exchange fixes it; celeryctl's own queues have one)"
        )
    from kombu.transport.native_delayed_delivery import (
        bind_queue_to_native_delayed_delivery_exchange,
        declare_native_delayed_delivery_exchanges_and_queues,
    )

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=CONNECT_TIMEOUT)
            if not _declared(conn):
                declare_native_delayed_delivery_exchanges_and_queues(
                    conn, app.conf.broker_native_delayed_delivery_queue_type
                )
            bind_queue_to_native_delayed_delivery_exchange(conn, q)
    except library_errors() as exc:
        raise publish_error(app, exc) from exc
    return None


def _declared(conn: Any) -> bool:
    """Whether the delay topology exists (a passive declare of its first and last exchange)."""
    import amqp.exceptions

    for exchange in (DELAYED_EXCHANGE, DELIVERY_EXCHANGE):
        channel = conn.channel()
        try:
            channel.exchange_declare(exchange, "topic", passive=True)
        except amqp.exceptions.NotFound:
            return False  # the broker closed this channel; the connection stays usable
        finally:
            if channel.is_open:
                channel.close()
    return True


def round_up_short_delays() -> None:
    """Countdowns under a second go through native delayed delivery as one second, in Celery's own
    ``apply_async`` too (a task's ``retry(countdown=0.5)`` in the worker), as :func:`fit` does for submit.

    Celery computes the delay's routing key from ``int(countdown)`` and raises
    ``ValueError: countdown must be a positive number`` for 0 < countdown < 1 (a ``retry`` with
    ``countdown=0.5`` fails in the worker; ``submit --eta`` a moment away fails).
    """
    import celery.app.base as base

    original = getattr(base, "calculate_routing_key", None)
    if original is None or getattr(original, "celeryctl_rounds_up", False):
        return

    def calculate_routing_key(countdown: int, routing_key: str) -> str:
        return str(original(max(1, int(countdown)), routing_key))

    calculate_routing_key.celeryctl_rounds_up = True  # type: ignore[attr-defined]
    base.calculate_routing_key = calculate_routing_key
