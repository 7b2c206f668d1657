"""Broker URLs, parsed once: :class:`BrokerUrl` (scheme, a list of hosts for Celery's ``;``-separated
failover URLs, credentials, vhost, masked form, this machine or not, celeryctl's node or not) and
the few helpers that build or mask URLs.  Nothing else in celeryctl splits a URL."""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

from celeryctl.errors import ConfigError

if TYPE_CHECKING:
    from celeryctl.rabbitmq.node import NodeInfo

SCHEMES = ("amqp", "amqps", "pyamqp")
DEFAULT_PORTS = {"amqp": 5672, "pyamqp": 5672, "amqps": 5671}
DEFAULT_PORT = DEFAULT_PORTS["amqp"]
MANAGEMENT_PORT = 15672
URL_HINT = "use amqp://USER:PASSWORD@HOST:PORT/VHOST"
LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
MAX_HOST_BYTES, MAX_LABEL_BYTES = 253, 63  # RFC 1035
# Underscores are not DNS, but /etc/hosts and container networks resolve them.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?", re.IGNORECASE)
# The query options kombu's Connection takes from a broker URL (any other one is a TypeError in
# kombu), plus every ``ssl_*`` option, which kombu folds into ``ssl``.  kombu takes
# ``connect_timeout`` too, but passes it on as text: every connection then fails (TypeError).
QUERY_OPTIONS = ("heartbeat", "ssl", "login_method", "insist")
LOGIN_METHODS = ("AMQPLAIN", "PLAIN", "EXTERNAL", "GSSAPI")  # py-amqp's; any other is a ValueError
SSL_CERT_REQS = ("CERT_REQUIRED", "CERT_OPTIONAL", "CERT_NONE", "required", "optional", "none")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


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


def _shown(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[:limit]}..."


def host_problem(host: str) -> str | None:
    """Why ``host`` (as a URL gives it, without brackets) cannot be a broker's host, or None."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"'{_shown(host)}' is not a valid IPv6 address"
        return None
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(name)
        except ValueError:
            return f"'{_shown(host)}' is not a valid IPv4 address"
        return None
    encoded: list[str] = []
    for label in labels:
        if not label:
            return f"'{_shown(host)}' has an empty label (two dots in a row, or a leading dot)"
        try:  # the form a resolver is given (punycode for a name that is not ASCII)
            ascii_label = label if label.isascii() else label.encode("idna").decode("ascii")
        except UnicodeError:
            return f"'{_shown(host)}' is not a valid host name"
        if len(ascii_label) > MAX_LABEL_BYTES:
            return f"the label '{_shown(label)}' is {len(ascii_label)} bytes long, the limit is {MAX_LABEL_BYTES}"
        if not _LABEL.fullmatch(ascii_label):
            return f"'{_shown(host)}' is not a valid host name (letters, digits, '-' and '.' only)"
        encoded.append(ascii_label)
    size = len(".".join(encoded))
    if size > MAX_HOST_BYTES:
        return f"the host name is {size} bytes long, the limit is {MAX_HOST_BYTES}"
    return None


def query_problem(key: str, value: str) -> str | None:
    """Why kombu (which Celery uses) would fail on, or misread, the URL query option ``key=value``."""
    shown = f"?{key}={_shown(value)}"
    if key.startswith("ssl_"):
        if key == "ssl_cert_reqs" and value not in SSL_CERT_REQS:
            return f"{shown} must be one of {', '.join(SSL_CERT_REQS)}"
        return None
    if key == "connect_timeout":
        return f"{shown} reaches the connection as text and breaks it; drop it (Celery's broker_connection_timeout sets it)"
    if key not in QUERY_OPTIONS:
        return f"?{key}= is not an option kombu knows (known: {', '.join(QUERY_OPTIONS)}, ssl_*)"
    if key == "heartbeat":
        try:
            number = float(value)
        except ValueError:
            return f"{shown} is not a number of seconds"
        if not math.isfinite(number) or number < 0:
            return f"{shown} must be a finite number of seconds, 0 or more"
    if key == "login_method" and value not in LOGIN_METHODS:
        return f"{shown} must be one of {', '.join(LOGIN_METHODS)}"
    if key == "ssl":
        if value.lower() in _FALSE:
            return f"{shown} would turn TLS on (kombu reads any value as on): drop ?ssl= for a plain connection"
        if value.lower() not in _TRUE:
            return f"{shown} must be true or 1 (or use amqps://)"
    return None


# --------------------------------------------------------------------------- URLs


def _query_turns_tls_on(text: str, where: str) -> bool:
    """Check a URL's query as kombu reads it (:class:`ConfigError` naming the option); does it
    turn TLS on (``?ssl=1``, any ``ssl_*``)?"""
    query = dict(parse_qsl(text, keep_blank_values=True))
    for key, val in query.items():
        problem = query_problem(key, val)
        if problem is not None:
            raise ConfigError(
                f"broker URL{where} has an invalid option: {problem}",
                f"fix or drop ?{key}= (kombu reads the query as options of its Connection)",
                details={"option": key},
            )
    ssl_keys = [k for k in query if k.startswith("ssl_")]
    if "ssl" in query and ssl_keys:  # kombu would set an item of the string "1"
        raise ConfigError(
            f"broker URL{where} has an invalid option: ?ssl= cannot be combined with ?{ssl_keys[0]}=",
            "drop ?ssl=: the ssl_* options turn TLS on by themselves",
            details={"option": "ssl"},
        )
    return "ssl" in query or bool(ssl_keys)


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
    ssl_option: bool = False  # ``?ssl=1``: kombu connects with TLS, as for amqps://

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
        ssl_option = False
        for url in urls:
            try:
                parts = urlsplit(url)
                port = parts.port
            except ValueError as exc:  # unbalanced brackets, a bad IPv6 literal, a port out of range
                raise ConfigError(f"broker URL{where} is invalid: {exc}", URL_HINT) from None
            if port == 0:  # urlsplit allows it; kombu would silently use the default port instead
                raise ConfigError(f"broker URL{where} is invalid: Port 0 is out of range 1-65535", URL_HINT)
            if parts.scheme not in SCHEMES:
                raise ConfigError(
                    f"broker URL{where} has scheme '{parts.scheme or '(none)'}', expected amqp:// or amqps://",
                    URL_HINT,
                )
            if not parts.hostname:
                raise ConfigError(f"broker URL{where} has no host", URL_HINT)
            problem = host_problem(parts.hostname)
            if problem is not None:
                raise ConfigError(f"broker URL{where} has an invalid host: {problem}", URL_HINT)
            tls = _query_turns_tls_on(parts.query, where) or parts.scheme == "amqps"
            hosts.append(Host(parts.hostname, port or DEFAULT_PORTS["amqps" if tls else parts.scheme]))
            if first is None:
                first, ssl_option = parts, tls and parts.scheme != "amqps"
        assert first is not None
        return cls(
            raw=value if isinstance(value, str) else ";".join(urls),
            urls=urls,
            scheme=first.scheme,
            hosts=tuple(hosts),
            user=unquote(first.username or "guest"),
            password=unquote(first.password) if first.password is not None else None,
            vhost=unquote(first.path[1:]) if len(first.path) > 1 else "/",
            ssl_option=ssl_option,
        )

    @property
    def url(self) -> str:
        """The first URL of the list."""
        return self.urls[0]

    def each(self) -> tuple[BrokerUrl, ...]:
        """One single-host BrokerUrl per entry of a failover list, in order (itself when it has one)."""
        return (self,) if len(self.urls) == 1 else tuple(BrokerUrl.parse(u) for u in self.urls)

    @property
    def host(self) -> str:
        return self.hosts[0].host

    @property
    def port(self) -> int:
        return self.hosts[0].port

    @property
    def tls(self) -> bool:
        return self.scheme == "amqps" or self.ssl_option

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
        # The query is kombu's (ssl_*, login_method: unknown to pika, which raises on them); the
        # timeouts below replace it.
        parts = urlsplit(self.url)
        bare = parts._replace(
            scheme="amqps" if self.tls else "amqp", path="/" + quote(self.vhost, safe=""), query="", fragment=""
        )
        params = pika.URLParameters(urlunsplit(bare))
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


# --------------------------------------------------------------------------- the management API's URL


@dataclass(frozen=True)
class ManagementUrl:
    """The HTTP management API of a broker: ``http(s)://[user[:password]@]host[:port][/prefix/]``.

    ``base`` ends with ``/`` and carries no credentials (``base + "api/overview"``); a URL
    without a port gets RabbitMQ's 15672 (https too: give the port a TLS listener uses).
    """

    base: str
    host: str
    port: int
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def masked(self) -> str:
        user = f"{quote(self.user, safe='')}{':****' if self.password is not None else ''}@" if self.user else ""
        scheme, rest = self.base.split("://", 1)
        return f"{scheme}://{user}{rest}"

    @classmethod
    def parse(cls, value: str, source: str = "") -> ManagementUrl:
        where = f"{source}: " if source else ""
        text = value.strip()
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"{where}{mask_url(text)!r} is not a URL ({exc})", MANAGEMENT_URL_HINT) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{where}{mask_url(text)!r} is not an http(s) URL of the management API", MANAGEMENT_URL_HINT
            )
        problem = host_problem(parts.hostname)
        if problem:
            raise ConfigError(f"{where}{problem}", MANAGEMENT_URL_HINT)
        if parts.query or parts.fragment:
            raise ConfigError(f"{where}the management URL takes no query or fragment", MANAGEMENT_URL_HINT)
        path = parts.path.rstrip("/")
        if path.endswith("/api"):  # the API's own address given: the base is one level up
            path = path[: -len("/api")]
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        port = port or MANAGEMENT_PORT
        user = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        return cls(f"{parts.scheme}://{shown}:{port}{path}/", host, port, user, password)


MANAGEMENT_URL_HINT = (
    "give the management API's address, e.g. --api http://rabbit.example.com:15672/ "
    "(env CELERYCTL_MANAGEMENT_URL; celeryctl broker start --management prints its own)"
)
