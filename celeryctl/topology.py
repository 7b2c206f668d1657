"""The queues celeryctl declares for an app: their type, delivery limit and dead-letter queue.

One home for the shape of a task queue.  ``worker``, ``submit``, ``doctor``, ``dead`` and
``convert-queue`` take the queue arguments, the dead-letter queue's name and the exchange from
here, so that every client declares a queue the same way (RabbitMQ refuses a redeclaration with
other arguments).

``quorum``: a quorum queue with ``x-delivery-limit`` (``max_deliveries`` - 1: the first delivery
is not a redelivery) that dead-letters, at least once, to ``NAME.dead``; bound to a topic exchange
so that Celery's native delayed delivery carries countdown/ETA tasks (a worker holding an ETA task
under a static prefetch would block).  ``classic``: exactly what Celery declares by itself.

Which one (README "Reliability"): every producer of a queue must declare it with the same
arguments, and an app's own code (``.delay()`` in a web view) declares its queues as the app's
configuration says.  So quorum is the default where celeryctl's declaration is the app's own:
the built-in demo app, and apps that call :func:`configure` (``celeryctl.configure(app)``) in
their module.  Any other app keeps what it declares itself (Celery's classic) unless
``queue_type`` is set explicitly (flag, ``CELERYCTL_QUEUE_TYPE`` or the settings file).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeryctl import validate
from celeryctl.errors import ConfigError, QueueMismatchError, UsageError

if TYPE_CHECKING:
    from celery import Celery

    from celeryctl.broker import BrokerUrl
    from celeryctl.settings import Settings

QUEUE_TYPES = ("quorum", "classic")
DEFAULT_QUEUE_TYPE = "quorum"
DEFAULT_MAX_DELIVERIES = 5
MAX_DELIVERIES_LIMIT = 1000
DEAD_SUFFIX = ".dead"
#: The topic exchange of celeryctl's quorum queues (routing key = queue name).  Not Celery's
#: ``celery`` exchange: that one is direct on every broker Celery has used, and RabbitMQ refuses
#: to redeclare an exchange with another type.
EXCHANGE = "celeryctl"


@dataclass(frozen=True)
class QueuePolicy:
    """How celeryctl declares the queues it creates."""

    queue_type: str = DEFAULT_QUEUE_TYPE
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    explicit: bool = True  # False: the default, which an app that declares its own queues keeps

    @property
    def quorum(self) -> bool:
        return self.queue_type == "quorum"

    def arguments(self, name: str) -> dict[str, Any] | None:
        """The ``x-`` arguments of queue ``name`` (None: Celery's plain classic queue)."""
        if not self.quorum:
            return None
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.max_deliveries - 1,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dead_queue(name),
            "x-overflow": "reject-publish",  # needed by at-least-once dead-lettering
            "x-dead-letter-strategy": "at-least-once",
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue_type": self.queue_type,
            "max_deliveries": self.max_deliveries if self.quorum else None,
            "exchange": EXCHANGE if self.quorum else None,
        }


def dead_queue(name: str) -> str:
    """The dead-letter queue of app queue ``name``."""
    return name + DEAD_SUFFIX


def is_dead_queue(name: str) -> bool:
    return name.endswith(DEAD_SUFFIX)


def check_queue_type(value: str, what: str = "--queue-type") -> str:
    """``quorum`` or ``classic`` (any case); anything else is a usage error naming ``what``."""
    text = str(value).strip().lower()
    if text not in QUEUE_TYPES:
        raise UsageError(f"{what} must be quorum or classic, got {value!r}", "for example --queue-type classic (README: Reliability)")
    return text


def check_max_deliveries(value: object, what: str = "--max-deliveries") -> int:
    return validate.count(value, what, low=1, high=MAX_DELIVERIES_LIMIT)


def policy(settings: Settings) -> QueuePolicy:
    """The policy the settings choose (flag > ``CELERYCTL_QUEUE_TYPE``/``_MAX_DELIVERIES`` > file)."""
    explicit = settings.sources.get("queue_type", "default") != "default"
    return QueuePolicy(settings.queue_type, settings.max_deliveries, explicit)


def check_priority(pol: QueuePolicy, priority: int | None) -> None:
    """A priority on a quorum queue is a usage error: quorum queues on RabbitMQ 3.x have none."""
    if priority is not None and pol.quorum:
        raise UsageError(
            "--priority has no effect on a quorum queue (RabbitMQ 3.x quorum queues have no priorities)",
            "leave out --priority, or use a classic queue: --queue-type classic",
            details={"queue_type": pol.queue_type},
        )


# --------------------------------------------------------------------------- the app's configuration


def kombu_queue(name: str, pol: QueuePolicy) -> Any:
    """A kombu ``Queue`` for ``name`` under ``pol`` that declares its dead-letter queue first."""
    from kombu import Exchange, Queue

    class AppQueue(Queue):  # type: ignore[misc]
        def declare(self, nowait: bool = False, channel: Any = None) -> Any:
            # Dead letters need somewhere to go before the first one exists (at-least-once
            # dead-lettering keeps a message in its queue until the target takes it).
            Queue(dead_queue(self.name), durable=True, auto_delete=False, no_declare=False).bind(
                channel or self.channel
            ).declare(nowait=nowait)
            return super().declare(nowait=nowait, channel=channel)

    return AppQueue(
        name,
        Exchange(EXCHANGE, type="topic", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments=pol.arguments(name),
    )


def configure_app(app: Celery, pol: QueuePolicy, names: Iterable[str] = ()) -> list[str]:
    """Apply ``pol`` to the app's default queue and ``names``; the app's queues celeryctl shaped.

    Nothing changes for ``classic``, for an app that lists its own ``task_queues`` (those made by
    :func:`configure` are returned: they are celeryctl's shape), or — when the policy is only the
    default — for an app other than celeryctl's own, whose code declares its queues itself.  The
    policy to declare the returned names with is :func:`policy_of`.
    """
    conf = app.conf
    if conf.task_queues:
        return managed_queues(app)
    if not pol.quorum or not (pol.explicit or conf.get(OWNED_KEY)):
        return []
    return _apply(app, pol, names)


def configure(app: Celery, *, max_deliveries: int = DEFAULT_MAX_DELIVERIES, queues: Iterable[str] = ()) -> Celery:
    """Give ``app`` celeryctl's quorum queues: call it in the app's module (``celeryctl.configure(app)``).

    Every producer that imports the app (a web view's ``.delay()``, a script, ``celeryctl submit``)
    and every worker then declare the same queues: quorum, at most ``max_deliveries`` deliveries,
    dead letters in ``QUEUE.dead``.  Returns ``app``.
    """
    pol = QueuePolicy("quorum", check_max_deliveries(max_deliveries, "max_deliveries"))
    _apply(app, pol, queues)
    return app


#: Set on celeryctl's own apps (the demo): their queues are declared only by celeryctl.
OWNED_KEY = "celeryctl_owned"
POLICY_KEY = "celeryctl_queue_policy"


def _apply(app: Celery, pol: QueuePolicy, names: Iterable[str]) -> list[str]:
    conf = app.conf
    wanted = list(dict.fromkeys([str(conf.task_default_queue), *names]))
    for name in wanted:
        validate.queue_name(dead_queue(name), f"the dead-letter queue of {name!r}")
    conf.task_queues = [kombu_queue(n, pol) for n in wanted]
    conf.task_default_exchange = EXCHANGE
    conf.task_default_exchange_type = "topic"
    conf.task_default_queue_type = "quorum"
    conf.task_create_missing_queue_type = "quorum"
    conf.task_create_missing_queue_exchange_type = "topic"
    options = dict(conf.broker_transport_options or {})
    options["confirm_publish"] = True
    conf.broker_transport_options = options
    conf[POLICY_KEY] = pol
    queues = app.amqp.queues
    queues.new_missing = lambda name: kombu_queue(name, pol)  # a route to a queue not listed
    from celeryctl import delayed

    delayed.round_up_short_delays()
    return wanted


def policy_of(app: Celery) -> QueuePolicy:
    """The policy :func:`configure_app` applied to ``app`` (classic when it applied none)."""
    pol = app.conf.get(POLICY_KEY)
    return pol if isinstance(pol, QueuePolicy) else QueuePolicy("classic")


def managed_queues(app: Celery) -> list[str]:
    """Names of the app's queues declared by :func:`configure_app` (quorum, with a dead-letter queue)."""
    return [name for name, q in app.amqp.queues.items() if (q.queue_arguments or {}).get("x-dead-letter-routing-key")]


# --------------------------------------------------------------------------- the broker's side


@dataclass(frozen=True)
class Mismatch:
    """An existing queue or exchange whose arguments differ from the ones celeryctl declares."""

    kind: str  # "queue" or "exchange"
    name: str
    argument: str
    wanted: str
    current: str

    def to_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "name": self.name,
            "argument": self.argument,
            "wanted": self.wanted,
            "current": self.current,
        }


_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?P<kind>queue|exchange) '(?P<name>[^']*)' in vhost '[^']*': "
    r"received (?P<wanted>.*?) but current is (?P<current>.*)$"
)


def _value(text: str) -> str:
    """``the value 'quorum' of type 'longstr'`` -> ``quorum``; ``none`` -> ``none``; ``'4'`` -> ``4``."""
    text = text.strip()
    m = re.match(r"the value '(.*)' of type", text)
    if m:
        return m.group(1)
    return text.strip("'")


def parse_mismatch(reply_text: str) -> Mismatch | None:
    """The mismatch RabbitMQ's 406 PRECONDITION_FAILED reply names, or None for another reply."""
    m = _INEQUIVALENT.search(reply_text)
    if m is None:
        return None
    return Mismatch(m["kind"], m["name"], m["arg"], _value(m["wanted"]), _value(m["current"]))


def mismatch_error(mismatch: Mismatch, pol: QueuePolicy) -> QueueMismatchError:
    """What to say about a queue that exists with other arguments, and the way out."""
    if mismatch.kind == "exchange":
        return QueueMismatchError(
            f"exchange {mismatch.name!r} exists with {mismatch.argument} {mismatch.current!r}; "
            f"celeryctl declares it with {mismatch.wanted!r}",
            f"delete it (rabbitmqadmin delete exchange name={mismatch.name}, or the management UI), "
            "or use --queue-type classic",
            details={"mismatch": mismatch.to_dict(), **pol.to_dict()},
        )
    name = mismatch.name
    if mismatch.argument == "x-queue-type" or (mismatch.current == "none") != (mismatch.wanted == "none"):
        current = "quorum" if pol.queue_type == "classic" else "classic"
        other = "quorum" if current == "quorum" else "classic"
        hint = (
            f"convert it (no worker may consume it): celeryctl convert-queue {name} --to {pol.queue_type}; "
            f"or keep it {other}: --queue-type {other} (queue_type = \"{other}\" in celeryctl.toml)"
        )
        message = (
            f"queue {name!r} already exists as a {current} queue, and RabbitMQ refuses to redeclare it "
            f"as a {pol.queue_type} queue"
        )
    elif mismatch.argument == "x-delivery-limit":
        was = int(mismatch.current) + 1 if mismatch.current.isdigit() else mismatch.current
        message = (
            f"queue {name!r} exists with max_deliveries {was}, not {pol.max_deliveries} "
            f"(RabbitMQ refuses to change a queue's delivery limit)"
        )
        hint = (
            f"use --max-deliveries {was} (max_deliveries = {was} in celeryctl.toml), or recreate it: "
            f"celeryctl convert-queue {name} --to quorum --max-deliveries {pol.max_deliveries}"
        )
    else:
        message = (
            f"queue {name!r} exists with {mismatch.argument} = {mismatch.current}, celeryctl declares "
            f"{mismatch.wanted}; RabbitMQ refuses the redeclaration"
        )
        hint = f"recreate it with celeryctl's arguments: celeryctl convert-queue {name} --to {pol.queue_type}"
    return QueueMismatchError(message, hint, details={"mismatch": mismatch.to_dict(), **pol.to_dict()})


def declare(url: str | BrokerUrl, names: Iterable[str], pol: QueuePolicy) -> None:
    """Declare ``names`` (and their dead-letter queues and exchange) on the broker as ``pol`` says.

    Run before a worker starts or a task is sent, so that a queue that exists with other arguments
    is one clear error (:class:`QueueMismatchError`, exit 3) instead of Celery's retry loop or
    traceback.  Exit 6/7 when the broker cannot be reached or refuses the login.
    """
    from celeryctl.broker import close_quietly, connect

    names = list(names)
    if not names:
        return
    conn = connect(url)
    try:
        for name in names:
            problem = _declare_one(conn, name, pol, create=True)
            if problem is not None:
                raise mismatch_error(problem, pol)
    finally:
        close_quietly(conn)


def check_existing(conn: Any, names: Iterable[str], pol: QueuePolicy) -> list[Mismatch]:
    """Mismatches of the ``names`` that exist (nothing is created): ``doctor``'s check."""
    return [m for name in names if (m := _declare_one(conn, name, pol, create=False)) is not None]


def _declare_one(conn: Any, name: str, pol: QueuePolicy, *, create: bool) -> Mismatch | None:
    import pika.exceptions

    channel = conn.channel()
    try:
        if not create:
            try:
                channel.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 404:
                    return None
                raise
        if pol.quorum and create:
            channel.exchange_declare(EXCHANGE, "topic", durable=True)
            channel.queue_declare(dead_queue(name), durable=True)
        # The queue exists (or is to be created): redeclaring it with the same arguments changes nothing.
        channel.queue_declare(name, durable=True, arguments=pol.arguments(name))
        if pol.quorum and create:
            channel.queue_bind(name, EXCHANGE, routing_key=name)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:
            found = parse_mismatch(str(exc.reply_text))
            if found is not None:
                return found
        raise ConfigError(f"the broker refused to declare queue {name!r}: {exc.reply_text}") from None
    finally:
        if channel.is_open:
            channel.close()
    return None
