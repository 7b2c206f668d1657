"""``celeryctl convert-queue``: give an existing queue another type (classic <-> quorum) or other
arguments, moving its messages with publisher confirms so that none is lost.

RabbitMQ refuses to redeclare a queue with other arguments, so a queue is converted by moving
its messages out to a holding queue (``QUEUE.converting``, durable classic), deleting it,
declaring it again as :mod:`celeryctl.topology` says (with its dead-letter queue for quorum),
and moving the messages back.  Every move publishes a copy (properties and headers kept,
persistent) and acknowledges the original only once the broker confirmed the copy: each message
is in the queue, the holding queue, or both, whatever stops the run; the next run continues from
the holding queue.  The queue must have no consumers (a worker would race the move).  Returns
data and raises :mod:`celeryctl.errors`; nothing prints.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeryctl import topology, validate
from celeryctl.broker import close_quietly, connect, parse, queue_depths
from celeryctl.errors import (
    AccessRefusedError,
    CeleryctlError,
    ConfigError,
    InterruptedError_,
    QueueBusyError,
    QueueNotFoundError,
    TimeoutError_,
    UnreachableError,
)

if TYPE_CHECKING:
    from celeryctl.broker import BrokerUrl, QueueDepth

HOLDING_SUFFIX = ".converting"
WINDOW = 1000  # copies published and not yet confirmed, at most
REPORT_EVERY = 256  # confirms read and progress reported every this many messages
#: How long the broker may take to confirm what is in flight.
CONFIRM_TIMEOUT = 30.0
#: How long a quorum queue may take to apply the acks of a move.
SETTLE_SECONDS = 15.0
#: Moves of a queue that publishers keep filling before giving up.
ROUNDS = 5

#: ``on_progress(phase, done, total)``: phase ``out`` (to the holding queue) or ``back``.
Progress = Callable[[str, int, int], None]


def holding_queue(name: str) -> str:
    """The queue that holds ``name``'s messages while it is converted."""
    return name + HOLDING_SUFFIX


@dataclass
class Conversion:
    """What ``convert-queue`` found and did."""

    queue: str
    holding: str
    vhost: str
    from_type: str | None  # None: the queue was already deleted by an interrupted run
    to_type: str
    max_deliveries: int | None
    from_arguments: dict[str, Any] | None
    to_arguments: dict[str, Any]
    messages: int  # ready in the queue and the holding queue when the run started
    changed: bool = False
    dry_run: bool = False
    resumed: bool = False  # a previous run's holding queue was found with messages
    resumed_messages: int = 0
    moved_out: int = 0  # to the holding queue
    moved: int = 0  # back into the converted queue
    seconds: float = 0.0
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "vhost": self.vhost,
            "holding_queue": self.holding,
            "from_type": self.from_type,
            "to_type": self.to_type,
            "max_deliveries": self.max_deliveries,
            "from_arguments": self.from_arguments,
            "to_arguments": self.to_arguments,
            "messages": self.messages,
            "changed": self.changed,
            "dry_run": self.dry_run,
            "resumed": self.resumed,
            "resumed_messages": self.resumed_messages,
            "moved_out": self.moved_out,
            "moved": self.moved,
            "seconds": round(self.seconds, 3),
            "steps": self.steps,
        }


# --------------------------------------------------------------------------- reading a queue's shape


def queue_arguments(conn: Any, name: str, limit: int = 32) -> dict[str, Any]:
    """The arguments of existing queue ``name``, read from the broker's refusals.

    AMQP has no "describe queue"; a declare with other arguments is refused naming one argument
    that differs and its current value (:func:`topology.parse_mismatch`), so the arguments are
    learned one refusal at a time (nothing is created or changed: every declare either matches
    the queue or is refused).  Works on any broker, with nothing but AMQP access.
    ``durable: False`` is reported for a transient queue.
    """
    import pika.exceptions

    args: dict[str, Any] = {}
    durable = True
    for _ in range(limit):
        channel = conn.channel()
        try:
            channel.queue_declare(name, durable=durable, arguments=args)
        except pika.exceptions.ChannelClosedByBroker as exc:
            found = topology.parse_mismatch(str(exc.reply_text)) if exc.reply_code == 406 else None
            if found is None:
                raise _channel_error(exc, f"read the arguments of queue '{name}'") from None
            if found.argument == "durable":
                durable = found.current != "false"
            elif found.current == "none":
                args.pop(found.argument, None)
            else:
                args[found.argument] = _typed(found.current)
            continue
        finally:
            close_quietly(channel)
        return args if durable else {**args, "durable": False}
    raise ConfigError(f"could not read the arguments of queue '{name}' (the broker kept refusing)")


def _typed(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        return text


def queue_type(arguments: dict[str, Any]) -> str:
    return str(arguments.get("x-queue-type", "classic"))


def _same(current: dict[str, Any], wanted: dict[str, Any] | None) -> bool:
    def norm(args: dict[str, Any]) -> dict[str, str]:
        out = {k: str(v) for k, v in args.items()}
        if out.get("x-queue-type") == "classic":
            del out["x-queue-type"]  # RabbitMQ takes an explicit classic as no type at all
        return out

    return norm(current) == norm(wanted or {})


# --------------------------------------------------------------------------- moving messages


class _Mover:
    """Moves the ready messages of one queue to another with publisher confirms.

    pika's blocking channel waits for each confirm on its own; a window of unconfirmed copies is
    what makes a move of 50,000 messages take seconds (a quorum queue confirms after a disk
    write), so the copies go out on the underlying asynchronous channel (``_impl``, pika's
    private API) and its confirms are read between ``basic_get`` calls.
    """

    def __init__(self, conn: Any, window: int) -> None:
        self.conn = conn
        self.window = window
        self.getter = conn.channel()
        self.publisher = conn.channel()
        self.confirmed_upto = 0  # every tag up to here is confirmed (a multiple ack)
        self.settled: set[int] = set()  # tags confirmed one by one
        self.refused = 0  # nacks and returns: copies the broker did not take
        self.inflight: deque[tuple[int, int]] = deque()  # (publish tag, source delivery tag)
        self.tag = 0
        ready: list[bool] = []
        impl = self.publisher._impl
        impl.confirm_delivery(ack_nack_callback=self._on_confirm, callback=lambda _frame: ready.append(True))
        impl.add_on_return_callback(self._on_return)
        self._pump_until(lambda: bool(ready), "the broker to turn on publisher confirms")

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if method.NAME.endswith("Nack"):
            self.refused += 1
        elif method.multiple:
            self.confirmed_upto = max(self.confirmed_upto, method.delivery_tag)
        else:
            self.settled.add(method.delivery_tag)

    def _on_return(self, *_args: Any) -> None:
        # Unroutable: the target queue is gone.  Its confirm (an ack) follows; it must not count.
        self.refused += 1

    def _pump_until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError_(
                    f"waited {CONFIRM_TIMEOUT:g} s for {what}",
                    "the broker may be overloaded or blocked (memory or disk alarm); run the same command again",
                )
            self.conn.process_data_events(time_limit=0.05)

    def _ack_confirmed(self, source: str, target: str) -> None:
        """Acknowledge the originals whose copies are confirmed, oldest first."""
        if self.refused:
            raise CeleryctlError(
                f"the broker did not take {self.refused} message(s) moved from '{source}' to '{target}'",
                "nothing was lost (their originals stay in place); check the broker's log, then run the same command again",
                details={"source": source, "target": target},
            )
        last = None
        while self.inflight:
            tag, source_tag = self.inflight[0]
            if tag > self.confirmed_upto and tag not in self.settled:
                break
            self.inflight.popleft()
            self.settled.discard(tag)
            last = source_tag
        if last is not None:
            self.getter.basic_ack(last, multiple=True)

    def _front_settled(self) -> bool:
        if self.refused or not self.inflight:
            return True
        tag = self.inflight[0][0]
        return tag <= self.confirmed_upto or tag in self.settled

    def _all_settled(self) -> bool:
        return bool(self.refused) or all(t <= self.confirmed_upto or t in self.settled for t, _ in self.inflight)

    def move(self, source: str, target: str, on_moved: Callable[[int], None]) -> int:
        """Move every ready message of ``source`` to ``target``; the number moved."""
        moved = 0
        publish = self.publisher._impl.basic_publish
        while True:
            method, properties, body = self.getter.basic_get(source, auto_ack=False)
            if method is None:
                break
            properties.delivery_mode = 2  # persistent, whatever it was
            if properties.headers and "x-delivery-count" in properties.headers:
                # The quorum queue's own count of this queue's deliveries: the target keeps its own.
                properties.headers = {k: v for k, v in properties.headers.items() if k != "x-delivery-count"} or None
            self.tag += 1
            self.inflight.append((self.tag, method.delivery_tag))
            publish("", target, body, properties=properties, mandatory=True)
            moved += 1
            if len(self.inflight) >= self.window:
                self._pump_until(self._front_settled, "confirms")
                self._ack_confirmed(source, target)
            if moved % REPORT_EVERY == 0:
                self.conn.process_data_events(time_limit=0)
                self._ack_confirmed(source, target)
                on_moved(moved)
        self._pump_until(self._all_settled, "confirms")
        self._ack_confirmed(source, target)
        on_moved(moved)
        return moved

    def close(self) -> None:
        close_quietly(self.getter)
        close_quietly(self.publisher)


# --------------------------------------------------------------------------- the conversion


def _channel_error(exc: Any, doing: str) -> CeleryctlError:
    code, text = getattr(exc, "reply_code", None), getattr(exc, "reply_text", str(exc))
    if code == 403:
        return AccessRefusedError(
            f"not allowed to {doing}: {text}", "the broker user needs configure, write and read permission on the queues"
        )
    if code == 405:
        return QueueBusyError(f"cannot {doing}: {text}", "an exclusive queue belongs to the connection that declared it")
    return CeleryctlError(f"the broker refused to {doing}: {text}")


def _declare_holding(conn: Any, holding: str) -> None:
    channel = conn.channel()
    try:
        channel.queue_declare(holding, durable=True)
    finally:
        close_quietly(channel)


def _depths(conn: Any, queue: str, holding: str) -> tuple[QueueDepth, QueueDepth]:
    depth, held = queue_depths(conn, [queue, holding])
    return depth, held


def _busy(queue: str, consumers: int) -> QueueBusyError:
    return QueueBusyError(
        f"queue '{queue}' has {consumers} consumer(s); it can only be converted while nothing consumes it",
        f"stop the workers that consume '{queue}' (and anything else reading it), then run this again",
        details={"queue": queue, "consumers": consumers},
    )


def _delete_when_empty(conn: Any, name: str, kind: str) -> bool:
    """Delete ``name`` if it has no messages and no consumers; False when messages arrived meanwhile."""
    import pika.exceptions

    channel = conn.channel()
    try:
        if kind == "classic":
            # The broker checks and deletes in one step: nothing published meanwhile is lost.
            channel.queue_delete(name, if_empty=True, if_unused=True)
            return True
        # Quorum queues refuse if-empty/if-unused (540 NOT_IMPLEMENTED, closing the connection):
        # check just before deleting instead.
        (depth,) = queue_depths(conn, [name])
        if depth.consumers:
            raise _busy(name, depth.consumers)
        if depth.ready:
            return False
        channel.queue_delete(name)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:  # not empty, or a consumer came
            (depth,) = queue_depths(conn, [name])
            if depth.consumers:
                raise _busy(name, depth.consumers) from None
            return False
        if exc.reply_code == 404:
            return True
        raise _channel_error(exc, f"delete queue '{name}'") from None
    finally:
        close_quietly(channel)


def _wait_settled(conn: Any, name: str, seconds: float = SETTLE_SECONDS) -> None:
    """Wait until the broker has applied every ack on ``name``.

    A quorum queue applies acks through its Raft log, after the ack frames were sent, and counts
    each ``basic_get`` not yet settled as a consumer.  Closing the channel before that could return
    acked messages to the queue (a duplicate), and the consumer count would read as a worker.
    """
    deadline = time.monotonic() + seconds
    while True:
        (depth,) = queue_depths(conn, [name])
        if not depth.consumers:
            return
        if time.monotonic() > deadline:
            raise _busy(name, depth.consumers or 0)
        time.sleep(0.05)


def _offset(on_progress: Progress, phase: str, before: int, total: int) -> Callable[[int], None]:
    def on_moved(n: int) -> None:
        on_progress(phase, before + n, max(total, before + n))

    return on_moved


def _drain_into(
    conn: Any, source: str, target: str, kind: str, total: int, phase: str, on_progress: Progress, window: int
) -> int:
    """Move ``source`` into ``target`` until ``source`` is empty, then delete ``source``."""
    moved = 0
    for _ in range(ROUNDS):
        mover = _Mover(conn, window)
        try:
            moved += mover.move(source, target, _offset(on_progress, phase, moved, total))
            _wait_settled(conn, source)
        finally:
            mover.close()  # synchronous: the broker has every ack before the source is deleted
        if _delete_when_empty(conn, source, kind):
            return moved
    raise CeleryctlError(
        f"messages kept arriving on queue '{source}' while it was emptied ({ROUNDS} rounds)",
        "stop what publishes to it, then run the same command again (it continues where it stopped)",
    )


def convert(
    url: str | BrokerUrl,
    queue: str,
    pol: topology.QueuePolicy,
    *,
    dry_run: bool = False,
    on_progress: Progress | None = None,
    window: int = WINDOW,
) -> Conversion:
    """Make ``queue`` a queue of ``pol``'s type and arguments, keeping every message.

    Nothing to do when it already is one (and no interrupted run left messages to restore).
    :class:`QueueNotFoundError` when it does not exist, :class:`QueueBusyError` when something
    consumes it, :class:`QueueMismatchError` when another client redeclares it meanwhile.
    """
    import pika.exceptions

    target = parse(url)
    holding = holding_queue(queue)
    validate.queue_name(holding, f"the holding queue of {queue!r}")
    if pol.quorum:
        validate.queue_name(topology.dead_queue(queue), f"the dead-letter queue of {queue!r}")
    report = on_progress or (lambda _phase, _n, _total: None)
    started = time.monotonic()
    conn = connect(target)
    result: Conversion | None = None
    try:
        depth, held = _depths(conn, queue, holding)
        resumed = held.exists and bool(held.ready)
        if held.exists and held.consumers:
            raise QueueBusyError(
                f"the holding queue '{holding}' has {held.consumers} consumer(s): is another convert-queue running?",
                "wait for it to finish, or stop what consumes the holding queue",
            )
        if not depth.exists and not resumed:
            raise QueueNotFoundError(
                f"queue '{queue}' does not exist on vhost '{target.vhost}'", "list the queues with: celeryctl queues"
            )
        current = queue_arguments(conn, queue) if depth.exists else None
        result = Conversion(
            queue=queue,
            holding=holding,
            vhost=target.vhost,
            from_type=queue_type(current) if current is not None else None,
            to_type=pol.queue_type,
            max_deliveries=pol.max_deliveries if pol.quorum else None,
            from_arguments=current,
            to_arguments=pol.arguments(queue) or {},
            messages=(depth.ready or 0) + (held.ready or 0),
            dry_run=dry_run,
            resumed=resumed,
            resumed_messages=held.ready or 0,
        )
        recreate = current is not None and not _same(current, pol.arguments(queue))
        if recreate and depth.consumers:
            raise _busy(queue, depth.consumers)
        _plan(result, depth, held)
        if dry_run:
            return result
        _apply(conn, target, result, pol, depth, held, report, window)
        result.changed = bool(result.steps)
    except KeyboardInterrupt:
        raise InterruptedError_(
            f"stopped converting queue '{queue}'; every message is in '{queue}' or '{holding}'",
            f"run the same command again: it continues from '{holding}'",
            details=result.to_dict() if result is not None else {"queue": queue},
        ) from None
    except pika.exceptions.ChannelClosedByBroker as exc:
        raise _channel_error(exc, f"convert queue '{queue}'") from None
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise UnreachableError(
            f"lost the broker at {target.masked} while converting queue '{queue}': {exc!r}",
            f"every message is in '{queue}' or '{holding}'; run the same command again once the broker is back",
        ) from None
    finally:
        close_quietly(conn)
    result.seconds = time.monotonic() - started
    return result


def _plan(result: Conversion, depth: QueueDepth, held: QueueDepth) -> None:
    """The steps a conversion takes, in words (``--dry-run`` shows them)."""
    queue, holding = result.queue, result.holding
    recreate = result.from_arguments is not None and not _same(result.from_arguments, result.to_arguments)
    if recreate:
        result.steps.append(f"move {depth.ready} message(s) from '{queue}' to '{holding}'")
        result.steps.append(f"delete '{queue}' and declare it as a {result.to_type} queue")
    elif not depth.exists:
        result.steps.append(f"declare '{queue}' as a {result.to_type} queue")
    if recreate or result.resumed:
        result.steps.append(f"move the messages of '{holding}' back to '{queue}' and delete '{holding}'")
    elif held.exists:
        result.steps.append(f"delete the empty holding queue '{holding}'")


def _apply(
    conn: Any,
    target: BrokerUrl,
    result: Conversion,
    pol: topology.QueuePolicy,
    depth: QueueDepth,
    held: QueueDepth,
    report: Progress,
    window: int,
) -> None:
    queue, holding = result.queue, result.holding
    recreate = result.from_arguments is not None and not _same(result.from_arguments, result.to_arguments)
    if recreate:
        _declare_holding(conn, holding)
        result.moved_out = _drain_into(conn, queue, holding, str(result.from_type), depth.ready or 0, "out", report, window)
    if recreate or not depth.exists:
        topology.declare(target, [queue], pol)
    if recreate or result.resumed:
        total = result.moved_out + result.resumed_messages
        result.moved = _drain_into(conn, holding, queue, "classic", total, "back", report, window)
    elif held.exists:
        _delete_when_empty(conn, holding, "classic")
