"""The one home of broker access.

* :class:`BrokerUrl` — a broker URL parsed once: scheme, hosts (a list: Celery's ``;``-separated
  failover URLs), credentials, vhost, its masked form, whether it is on this machine and whether
  it is celeryctl's own node.  Nothing else in celeryctl splits a URL.
* Reachability — :func:`ensure_reachable` (AMQP handshake, then a login) and :func:`connect`
  (a pika connection) both map failures the same way: exit 6 (unreachable) or 7 (refused).
* Queue depth — :func:`queue_depths` (passive declares on any open connection: ready and
  consumers) and :func:`list_queues` (every queue of the vhost through ``rabbitmqctl`` when the
  broker is celeryctl's node, with unacknowledged messages apart; else passive declares).
* :func:`app_queue_names` — the queues a Celery app sends to.

This module imports neither celery, kombu nor pika at module level (``--help`` stays fast).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from celeryctl.errors import AccessRefusedError, ConfigError, QueueNotFoundError, UnreachableError

if TYPE_CHECKING:
    from celery import Celery

    from celeryctl.rabbitmq.ctl import Runner
    from celeryctl.rabbitmq.node import NodeInfo
    from celeryctl.settings import Settings

SCHEMES = ("amqp", "amqps", "pyamqp")
DEFAULT_PORTS = {"amqp": 5672, "pyamqp": 5672, "amqps": 5671}
DEFAULT_PORT = DEFAULT_PORTS["amqp"]
MANAGEMENT_PORT = 15672
URL_HINT = "use amqp://USER:PASSWORD@HOST:PORT/VHOST"
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
START_HINT = "start it (celeryctl broker start) or check --broker / CELERYCTL_BROKER_URL"
WAIT_HINT = (
    "start it (celeryctl broker start), check --broker / CELERYCTL_BROKER_URL, "
    "or wait for it with --wait-for-broker SECONDS"
)
CREDENTIALS_HINT = "check the user, password and vhost in the broker URL (celeryctl setup-broker creates them)"


# --------------------------------------------------------------------------- hosts


def is_loopback(host: str) -> bool:
    """``localhost``, ``127.x.y.z``, ``::1``: reachable only from this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_this_machine(host: str) -> bool:
    """Loopback, or this machine's own host name (``rabbit@myhost`` runs here)."""
    if not host or is_loopback(host):
        return True
    name = socket.gethostname().lower()
    return host.lower() in (name, name.split(".")[0])


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class Host:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class BrokerUrl:
    """An AMQP broker URL, parsed the way kombu reads it (``//`` and ``/%2F`` are vhost ``/``).

    ``raw`` is the value as given; a failover list (``amqp://h1;amqp://h2``) has one entry in
    ``urls`` and ``hosts`` per broker.  User, password and vhost are the first URL's.
    """

    raw: str
    urls: tuple[str, ...]
    scheme: str
    hosts: tuple[Host, ...]
    user: str
    password: str | None
    vhost: str

    @classmethod
    def parse(cls, value: str | Sequence[str], source: str = "") -> BrokerUrl:
        """Parse one URL or a failover list; :class:`ConfigError` (exit 3) when it is not AMQP."""
        where = f" (from {source})" if source else ""
        items = [value] if isinstance(value, str) else list(value)
        urls = tuple(u.strip() for item in items for u in str(item).split(";") if u.strip())
        if not urls:
            raise ConfigError(f"broker URL{where} is empty", URL_HINT)
        hosts: list[Host] = []
        first = None
        for url in urls:
            try:
                parts = urlsplit(url)
                port = parts.port
            except ValueError as exc:
                raise ConfigError(f"broker URL{where} is invalid: {exc}", URL_HINT) from None
            if parts.scheme not in SCHEMES:
                raise ConfigError(
                    f"broker URL{where} has scheme '{parts.scheme or '(none)'}', expected amqp:// or amqps://",
                    URL_HINT,
                )
            if not parts.hostname:
                raise ConfigError(f"broker URL{where} has no host", URL_HINT)
            hosts.append(Host(parts.hostname, port or DEFAULT_PORTS[parts.scheme]))
            first = first or parts
        assert first is not None
        return cls(
            raw=value if isinstance(value, str) else ";".join(urls),
            urls=urls,
            scheme=first.scheme,
            hosts=tuple(hosts),
            user=unquote(first.username or "guest"),
            password=unquote(first.password) if first.password is not None else None,
            vhost=unquote(first.path[1:]) if len(first.path) > 1 else "/",
        )

    @property
    def url(self) -> str:
        """The first URL of the list."""
        return self.urls[0]

    @property
    def host(self) -> str:
        return self.hosts[0].host

    @property
    def port(self) -> int:
        return self.hosts[0].port

    @property
    def tls(self) -> bool:
        return self.scheme == "amqps"

    @property
    def masked(self) -> str:
        return ";".join(mask_url(u) for u in self.urls)

    @property
    def on_this_machine(self) -> bool:
        return all(is_this_machine(h.host) for h in self.hosts)

    @property
    def key(self) -> tuple[object, ...]:
        """What makes two URLs the same broker login (``//`` and ``/%2F`` are both vhost ``/``)."""
        hosts = tuple((h.host.lower(), h.port) for h in self.hosts)
        return (self.tls, hosts, self.user, self.password, self.vhost)

    def is_node(self, info: NodeInfo | None) -> bool:
        """Is this celeryctl's private node (described by ``info``)?"""
        return info is not None and any(is_loopback(h.host) and h.port == info.port for h in self.hosts)

    def with_credentials(self, user: str, password: str) -> str:
        """The first URL with another user and password (same host, port and vhost)."""
        return build_amqp_url(user, password, self.host, self.port, self.vhost, scheme=self.scheme)

    def pika_parameters(self, timeout: float = 2.0) -> Any:
        """pika parameters for the first URL, with short timeouts and no retries."""
        import pika

        # kombu reads the vhost as everything after the first slash ("//" is "/"); pika wants it quoted.
        parts = urlsplit(self.url.replace("pyamqp://", "amqp://", 1))
        params = pika.URLParameters(urlunsplit(parts._replace(path="/" + quote(self.vhost, safe=""))))
        params.socket_timeout = timeout
        params.blocked_connection_timeout = timeout
        params.stack_timeout = timeout * 2
        params.connection_attempts = 1
        params.retry_delay = 0
        return params


def parse(value: str | Sequence[str] | BrokerUrl, source: str = "") -> BrokerUrl:
    return value if isinstance(value, BrokerUrl) else BrokerUrl.parse(value, source)


def mask_url(url: str) -> str:
    """Hide the password of any URL (``amqp://user:****@host/vhost``); lists are masked item by item."""
    if ";" in url:
        return ";".join(mask_url(u) for u in url.split(";"))
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:****@{netloc[1]}"))


def url_password(url: str) -> str | None:
    """The password of a URL (of the first URL of a list), or None."""
    try:
        pw = urlsplit(url.split(";", 1)[0]).password
    except ValueError:
        return None
    return unquote(pw) if pw is not None else None


def url_user(url: str) -> str | None:
    try:
        user = urlsplit(url.split(";", 1)[0]).username
    except ValueError:
        return None
    return unquote(user) if user is not None else None


def build_amqp_url(user: str, password: str, host: str, port: int, vhost: str, *, scheme: str = "amqp") -> str:
    """An AMQP URL with user, password and vhost percent-encoded (vhost ``/`` becomes ``%2F``)."""
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{shown}:{port}/{quote(vhost, safe='')}"


def with_userinfo(http_url: str, user: str, password: str) -> str:
    """``http://host:port/path`` with credentials (Flower's broker API URL)."""
    parts = urlsplit(http_url)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.netloc.rsplit('@', 1)[-1]}"
    return urlunsplit(parts._replace(netloc=netloc))


def first_url(value: Any) -> str | None:
    """The first URL of a broker setting (celery allows a list or ``;``-separated failover URLs)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    if not isinstance(value, str) or not value:
        return None
    return value.split(";", 1)[0].strip()


# --------------------------------------------------------------------------- celeryctl's own node


def own_node(settings: Settings, url: str | BrokerUrl) -> NodeInfo | None:
    """celeryctl's running node when ``url`` points at it, else None."""
    info = settings.local_node().running_info()
    return info if parse(url).is_node(info) else None


def own_node_runner(settings: Settings, url: str | BrokerUrl, timeout: float = 10.0) -> Runner | None:
    """A rabbitmqctl runner for celeryctl's node when ``url`` points at it, else None."""
    info = own_node(settings, url)
    return settings.local_node().runner(info, timeout=timeout) if info is not None else None


def own_management_url(settings: Settings, url: str | BrokerUrl) -> str | None:
    """``http://127.0.0.1:PORT/`` of celeryctl's node when ``url`` is it and management is on."""
    info = own_node(settings, url)
    return info.management_url if info is not None else None


# --------------------------------------------------------------------------- reachability


def access_error(url: str | BrokerUrl, kind: str | None, message: str, *, suffix: str = "") -> Exception:
    """The one mapping of a failed connection: refused login or vhost -> exit 7, else exit 6."""
    shown = url.masked if isinstance(url, BrokerUrl) else mask_url(url)
    if kind in ("auth", "vhost"):
        return AccessRefusedError(
            f"the broker at {shown} refused access: {message}{suffix}", CREDENTIALS_HINT, details={"kind": kind}
        )
    return UnreachableError(f"cannot reach the broker at {shown}: {message}{suffix}", START_HINT, details={"kind": kind})


def ensure_reachable(
    url: str | BrokerUrl,
    *,
    wait: float = 0.0,
    timeout: float = 2.0,
    login: bool = True,
    suffix: str = "",
    hint: str = WAIT_HINT,
) -> None:
    """Raise exit 6 unless an AMQP server answers at ``url`` (retrying for ``wait`` seconds), and
    with ``login`` exit 7 unless the URL's user may log in to its vhost.

    The handshake is raw AMQP (no pika import): a broker that is down fails in milliseconds.
    ``suffix`` is added to the message (``; nothing was submitted``), ``hint`` replaces the hint
    of an unreachable broker.
    """
    from celeryctl.probe import amqp_handshake, check_access

    target = parse(url)
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        shake = amqp_handshake(target.host, target.port, timeout=timeout)
        if shake.ok or time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
    if not shake.ok:
        raise UnreachableError(
            f"cannot reach the broker at {target.masked}: {shake.error}{suffix}", hint, details={"kind": shake.kind}
        )
    if not login:
        return
    report = check_access(target, timeout=timeout, check_permissions=False)
    if not report.ok:
        raise access_error(target, report.kind, report.error or "login failed", suffix=suffix)


def connect(url: str | BrokerUrl, timeout: float = 3.0) -> Any:
    """A pika ``BlockingConnection``; failures are exit 6 or 7 as in :func:`ensure_reachable`."""
    import pika
    import pika.exceptions

    from celeryctl.probe import classify_pika_error

    target = parse(url)
    params = target.pika_parameters(timeout)
    try:
        return pika.BlockingConnection(params)
    except (pika.exceptions.AMQPError, OSError) as exc:
        kind, message = classify_pika_error(exc, target.host, target.port, target.vhost, target.user)
        raise access_error(target, kind, message) from None


def close_quietly(conn: Any) -> None:
    """Close a pika or kombu connection or channel that may already be broken."""
    try:
        close = getattr(conn, "close", None) or conn.release
        close()
    except Exception:  # noqa: BLE001 - closing what the broker (or the network) already closed
        pass


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
    source: str  # "rabbitmqctl" (celeryctl's node) or "amqp" (passive declare)
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
    """What a passive declare raises for a missing or forbidden queue (pika or py-amqp)."""
    errors: list[type[BaseException]] = []
    try:
        import pika.exceptions

        errors.append(pika.exceptions.ChannelClosedByBroker)
    except ImportError:  # pragma: no cover - pika is a dependency
        pass
    try:
        import amqp.exceptions

        errors.append(amqp.exceptions.ChannelError)
    except ImportError:  # pragma: no cover - celery brings amqp
        pass
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


def is_internal_queue(name: str) -> bool:
    """Celery's own plumbing: remote-control (pidbox), event and ``rpc://`` reply queues."""
    return (
        bool(_UUID.match(name))  # rpc:// result queues are named by a UUID
        or name.endswith(".pidbox")
        or name.startswith(("celeryev.", "amq.", "celery.check.", "celeryctl.check."))
        or name.endswith(".reply.celery.pidbox")
    )


def queues_via_ctl(runner: Runner, vhost: str, *, include_internal: bool = False) -> list[QueueDepth]:
    """Every queue of ``vhost`` with ready and unacknowledged messages apart (rabbitmqctl)."""
    rows = runner.json(
        "list_queues",
        "-p",
        vhost,
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "durable",
        "auto_delete",
        "exclusive",
    )
    out: list[QueueDepth] = []
    for row in rows if isinstance(rows, list) else []:
        name = str(row.get("name", ""))
        if not include_internal and (is_internal_queue(name) or row.get("exclusive") is True):
            continue
        if not include_internal and row.get("auto_delete") is True and not row.get("durable"):
            continue  # rpc:// reply queues and other throw-away queues
        out.append(
            QueueDepth(
                name=name,
                ready=int(row.get("messages_ready") or 0),
                unacked=int(row.get("messages_unacknowledged") or 0),
                consumers=int(row.get("consumers") or 0),
            )
        )
    return sorted(out, key=lambda q: q.name)


def list_queues(
    url: str | BrokerUrl,
    settings: Settings,
    names: Iterable[str] = (),
    *,
    include_internal: bool = False,
    runner: Runner | None = None,
) -> QueueReport:
    """Queue depths on the broker's vhost.

    On celeryctl's own node every queue of the vhost is listed through rabbitmqctl (ready and
    unacknowledged apart); elsewhere the ``names`` given are looked up by passive declare.
    """
    from celeryctl.errors import CeleryctlError

    target = parse(url)
    wanted = list(dict.fromkeys(names))
    runner = runner or own_node_runner(settings, target)
    if runner is not None:
        try:
            queues = queues_via_ctl(runner, target.vhost, include_internal=include_internal)
        except CeleryctlError:
            queues = None  # rabbitmqctl failed (cookie, node busy): fall back to AMQP
        if queues is not None:
            present = {q.name for q in queues}
            return QueueReport(target.vhost, "rabbitmqctl", queues, [n for n in wanted if n not in present])
    conn = connect(target)
    try:
        depths = queue_depths(conn, wanted)
    finally:
        close_quietly(conn)
    found = sorted((d for d in depths if d.exists), key=lambda q: q.name)
    return QueueReport(target.vhost, "amqp", found, [d.name for d in depths if not d.exists])


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
