"""Queue depth (ready, unacknowledged where known, consumers) and the queues an app sends to.

Three sources list queues, chosen once by :func:`queue_lister` (the one place that decides):
the management HTTP API when a management URL is set or celeryctl's node runs the plugin
(ready, unacked, consumers, rates, quorum members; any broker), else ``rabbitmqctl`` on
celeryctl's own node (ready and unacked), else passive declares over AMQP (ready and consumers
of the queues named).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from celeryctl.broker.access import close_quietly, connect, own_node_runner
from celeryctl.broker.url import BrokerUrl, parse
from celeryctl.errors import AccessRefusedError, CeleryctlError, QueueNotFoundError

if TYPE_CHECKING:
    from celery import Celery

    from celeryctl.rabbitmq.api import ManagementApi
    from celeryctl.rabbitmq.ctl import Runner
    from celeryctl.settings import Settings

# --------------------------------------------------------------------------- queue depth


@dataclass
class QueueDepth:
    """One queue: ``ready`` waits for a consumer, ``unacked`` is delivered and not yet
    acknowledged (None when unknown: a passive declare does not tell)."""

    name: str
    ready: int | None
    unacked: int | None
    consumers: int | None
    exists: bool = True
    dead: int | None = None  # messages in its dead-letter queue (NAME.dead); None: it has none
    # Only the management API tells these (None through rabbitmqctl or AMQP):
    type: str | None = None  # classic, quorum, stream
    publish_rate: float | None = None  # messages per second, as the API's last sample says
    deliver_rate: float | None = None
    leader: str | None = None  # quorum queues: the leader node, the members, those online
    members: list[str] | None = None
    online: list[str] | None = None

    @property
    def messages(self) -> int | None:
        """Every message the queue holds: ready + unacked (ready alone when unacked is unknown)."""
        if self.ready is None:
            return None
        return self.ready + (self.unacked or 0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "messages": self.messages}


@dataclass
class QueueReport:
    vhost: str
    source: str  # "api" (management API), "rabbitmqctl" (celeryctl's node) or "amqp" (passive declare)
    queues: list[QueueDepth]
    missing: list[str] = field(default_factory=list)  # asked-for queues that do not exist

    def to_dict(self) -> dict[str, Any]:
        return {
            "vhost": self.vhost,
            "source": self.source,
            "queues": [q.to_dict() for q in self.queues],
            "missing": self.missing,
        }


def _reply_code(exc: BaseException) -> int | None:
    # pika: ChannelClosedByBroker.reply_code; py-amqp (kombu): NotFound.reply_code / .code
    code = getattr(exc, "reply_code", None) or getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def _channel_errors() -> tuple[type[BaseException], ...]:
    """What a passive declare raises for a missing or forbidden queue: py-amqp's (kombu) errors,
    and pika's when pika is loaded (a pika connection cannot exist otherwise; importing it for a
    kombu connection would cost the submit path ~45 ms)."""
    import amqp.exceptions

    errors: list[type[BaseException]] = [amqp.exceptions.ChannelError]
    pika_exceptions = sys.modules.get("pika.exceptions")
    if pika_exceptions is not None:
        errors.append(pika_exceptions.ChannelClosedByBroker)
    return tuple(errors)


def queue_depths(conn: Any, names: Iterable[str]) -> list[QueueDepth]:
    """Ready messages and consumers of each queue by passive declare (changes nothing, needs no
    permission), on an open pika or kombu connection.  A queue that does not exist comes back
    with ``exists=False``; one the user may not see is exit 7."""
    depths: list[QueueDepth] = []
    errors = _channel_errors()
    channel = conn.channel()
    try:
        for name in dict.fromkeys(names):
            try:
                ok = channel.queue_declare(queue=name, passive=True)
            except errors as exc:
                code = _reply_code(exc)
                if code == 403:
                    raise AccessRefusedError(
                        f"not allowed to look at queue '{name}': {exc}",
                        "the broker user needs configure permission on the queue",
                    ) from None
                if code != 404:
                    raise
                depths.append(QueueDepth(name, 0, None, 0, exists=False))
                channel = conn.channel()  # the error closed the channel
                continue
            frame = getattr(ok, "method", ok)  # pika: a frame around Queue.DeclareOk; py-amqp: a tuple
            depths.append(QueueDepth(name, int(frame.message_count), None, int(frame.consumer_count)))
    finally:
        close_quietly(channel)
    return depths


def queue_depth(url: str | BrokerUrl, queue: str) -> QueueDepth:
    """One queue through a passive declare; a queue that does not exist is an error."""
    conn = connect(url)
    try:
        (depth,) = queue_depths(conn, [queue])
    finally:
        close_quietly(conn)
    if not depth.exists:
        raise QueueNotFoundError(
            f"queue '{queue}' does not exist on vhost '{parse(url).vhost}'", "list the queues with: celeryctl queues"
        )
    return depth


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: Celery's native delayed delivery (countdown/ETA on quorum queues): ``celery_delayed_0..27``.
_DELAYED = re.compile(r"^celery_delayed_[0-9]+$")


def is_internal_queue(name: str) -> bool:
    """Celery's own plumbing: remote-control (pidbox), event, ``rpc://`` reply queues and the
    native delayed delivery queues (``celery_delayed_N``)."""
    return (
        bool(_UUID.match(name))  # rpc:// result queues are named by a UUID
        or bool(_DELAYED.match(name))
        or name.endswith(".pidbox")
        or name.startswith(("celeryev.", "amq.", "celery.check.", "celeryctl.check."))
        or name.endswith(".reply.celery.pidbox")
    )


#: The columns rabbitmqctl and the management API both name the same way.
QUEUE_COLUMNS = ("name", "messages_ready", "messages_unacknowledged", "consumers", "durable", "auto_delete", "exclusive")


def queues_via_ctl(runner: Runner, vhost: str, *, include_internal: bool = False) -> list[QueueDepth]:
    """Every queue of ``vhost`` with ready and unacknowledged messages apart (rabbitmqctl)."""
    rows = runner.json("list_queues", "-p", vhost, *QUEUE_COLUMNS)
    rows = rows if isinstance(rows, list) else []
    return sorted((_depth(r) for r in rows if _listed(r, include_internal)), key=lambda q: q.name)


def _listed(row: dict[str, Any], include_internal: bool) -> bool:
    """Whether a listed queue is shown: Celery's plumbing and throw-away queues only with --all."""
    if include_internal:
        return True
    if is_internal_queue(str(row.get("name", ""))) or row.get("exclusive") is True:
        return False
    return not (row.get("auto_delete") is True and not row.get("durable"))  # rpc:// replies and the like


def _depth(row: dict[str, Any], **extra: Any) -> QueueDepth:
    """A queue as rabbitmqctl and the management API both name its columns."""
    return QueueDepth(
        name=str(row.get("name", "")),
        ready=int(row.get("messages_ready") or 0),
        unacked=int(row.get("messages_unacknowledged") or 0),
        consumers=int(row.get("consumers") or 0),
        **extra,
    )


#: What ``/api/queues/VHOST`` is asked for (``?columns=``: small answers on big brokers).
API_QUEUE_COLUMNS = (
    *QUEUE_COLUMNS,
    "type",
    "leader",
    "members",
    "online",
    "message_stats.publish_details.rate",
    "message_stats.deliver_get_details.rate",
)


def _rate(stats: Any, key: str) -> float | None:
    rate = ((stats or {}).get(key) or {}).get("rate") if isinstance(stats, dict) else None
    return float(rate) if isinstance(rate, (int, float)) else None


def queues_via_api(api: ManagementApi, vhost: str, *, include_internal: bool = False) -> list[QueueDepth]:
    """Every queue of ``vhost`` through the management API: ready, unacked, consumers, and what
    only the API knows (type, publish/deliver rates, a quorum queue's leader and members).

    The API's counts are its last statistics sample (every 5 s by default): a queue declared a
    moment ago may show no counts yet (0 here)."""
    out: list[QueueDepth] = []
    for row in api.queues(vhost, API_QUEUE_COLUMNS):
        if not _listed(row, include_internal):
            continue
        stats = row.get("message_stats")
        members, online = row.get("members"), row.get("online")
        out.append(
            _depth(
                row,
                type=str(row["type"]) if row.get("type") else None,
                publish_rate=_rate(stats, "publish_details"),
                deliver_rate=_rate(stats, "deliver_get_details"),
                leader=str(row["leader"]) if row.get("leader") else None,
                members=[str(m) for m in members] if isinstance(members, list) else None,
                online=[str(m) for m in online] if isinstance(online, list) else None,
            )
        )
    return sorted(out, key=lambda q: q.name)


@dataclass
class QueueLister:
    """How one broker's queues are listed, decided once by :func:`queue_lister` and used as
    often as needed (``top`` polls): the API, else rabbitmqctl, else passive declares."""

    url: BrokerUrl
    api: ManagementApi | None = None
    explicit: bool = False  # the API was configured: its failures are errors, never a fallback
    runner: Runner | None = None

    @property
    def lists_every_queue(self) -> bool:
        """True when the API or rabbitmqctl may list the whole vhost (else: passive declares)."""
        return self.api is not None or self.runner is not None

    def every_queue(self, *, include_internal: bool = False) -> tuple[str, list[QueueDepth]] | None:
        """(source, every queue of the vhost) through the API or rabbitmqctl; None when neither
        can (then the caller declares the names it knows).  A configured API that fails raises
        its error (exit 6/7/5); celeryctl's own node's API that refuses the login (the broker
        URL's user lacks a management tag) falls back to rabbitmqctl, silently, for good."""
        if self.api is not None:
            try:
                return "api", queues_via_api(self.api, self.url.vhost, include_internal=include_internal)
            except CeleryctlError:
                if self.explicit:
                    raise
                self.api = None
        if self.runner is not None:
            try:
                return "rabbitmqctl", queues_via_ctl(self.runner, self.url.vhost, include_internal=include_internal)
            except CeleryctlError:
                pass  # rabbitmqctl failed (cookie, node busy): fall back to AMQP
        return None

    def report(
        self, names: Iterable[str] = (), asked: Iterable[str] | None = None, *, include_internal: bool = False
    ) -> QueueReport:
        """Every queue of the vhost when the API or rabbitmqctl lists them, else ``names`` by
        passive declare; ``missing`` lists the names (only those in ``asked`` when given) absent."""
        wanted = list(dict.fromkeys(names))
        listing = self.every_queue(include_internal=include_internal)
        if listing is None:
            return queues_via_amqp(self.url, wanted, asked)
        source, queues = listing
        present = {q.name for q in queues}
        among = wanted if asked is None else list(asked)
        return QueueReport(self.url.vhost, source, queues, [n for n in among if n not in present])

    def close(self) -> None:
        if self.api is not None:
            self.api.close()


def queue_lister(settings: Settings, url: str | BrokerUrl, *, runner: Runner | None = None) -> QueueLister:
    """THE choice of how to list ``url``'s queues: the management API when a management URL is
    set (``--api``, CELERYCTL_MANAGEMENT_URL, the settings file) or celeryctl's node runs the
    plugin; rabbitmqctl when ``url`` is celeryctl's own node; else passive declares."""
    from celeryctl.rabbitmq.api import resolve_api

    target = parse(url)
    explicit = bool(settings.management_url)
    try:
        api = resolve_api(settings, target)
    except CeleryctlError:
        if explicit:
            raise
        api = None  # celeryctl's node, and a broker URL without a login to offer it: rabbitmqctl
    if runner is None and not explicit:
        runner = own_node_runner(settings, target)
    return QueueLister(target, api, explicit, runner)


def list_queues(
    url: str | BrokerUrl,
    settings: Settings,
    names: Iterable[str] = (),
    *,
    include_internal: bool = False,
) -> QueueReport:
    """Queue depths on the broker's vhost, through :func:`queue_lister`'s choice: every queue of
    the vhost through the API or rabbitmqctl, else the ``names`` given by passive declare."""
    lister = queue_lister(settings, url)
    try:
        return lister.report(names, include_internal=include_internal)
    finally:
        lister.close()


def queues_via_amqp(url: str | BrokerUrl, names: Iterable[str], asked: Iterable[str] | None = None) -> QueueReport:
    """Passive declares of ``names`` on one connection; ``missing`` lists the names that do not
    exist (only those among ``asked`` when it is given: the ``-Q`` ones)."""
    target = parse(url)
    conn = connect(target)
    try:
        depths = queue_depths(conn, names)
    finally:
        close_quietly(conn)
    wanted = set(names if asked is None else asked)
    found = sorted((d for d in depths if d.exists), key=lambda q: q.name)
    return QueueReport(target.vhost, "amqp", found, [d.name for d in depths if not d.exists and d.name in wanted])


def with_dead_letter_queues(names: Iterable[str]) -> list[str]:
    """``names`` and each one's dead-letter queue (``NAME.dead``), for passive declares."""
    from celeryctl.topology import dead_queue, is_dead_queue

    out: list[str] = []
    for name in names:
        out.append(name)
        if not is_dead_queue(name):
            out.append(dead_queue(name))
    return list(dict.fromkeys(out))


def fold_dead_letters(queues: list[QueueDepth]) -> list[QueueDepth]:
    """Each queue with ``dead`` set from its dead-letter queue's depth; the dead-letter queues
    whose queue is listed are folded into it (``status`` and ``top`` show a ``dead`` column)."""
    from celeryctl.topology import dead_queue, is_dead_queue

    by_name = {q.name: q for q in queues}
    folded: set[str] = set()
    for q in queues:
        if is_dead_queue(q.name):
            continue
        dead = by_name.get(dead_queue(q.name))
        if dead is not None and dead.exists:
            q.dead = dead.messages
            folded.add(dead.name)
    return [q for q in queues if q.name not in folded]


# --------------------------------------------------------------------------- the app's queues


def app_queue_names(app: Celery) -> list[str]:
    """The queues the app sends to: the default queue, ``task_queues``, ``task_routes`` and the
    tasks' own ``queue`` options, in that order, each once."""
    conf = app.conf
    names: list[str] = [conf.task_default_queue or "celery"]

    def add(value: Any) -> None:
        if isinstance(value, str):
            names.append(value)
        elif getattr(value, "name", None):
            names.append(str(value.name))
        elif isinstance(value, dict):
            add(value.get("queue"))

    for queue in conf.task_queues or ():
        add(queue)
    routes = conf.task_routes
    for mapping in routes if isinstance(routes, (list, tuple)) else [routes]:
        if isinstance(mapping, dict):
            for value in mapping.values():
                add(value)
    for task in list(app.tasks.values()):
        add(getattr(task, "queue", None))
    return list(dict.fromkeys(n for n in names if n))
