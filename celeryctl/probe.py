"""Network and AMQP checks.  Return data, never print.

``amqp_handshake`` speaks just enough AMQP 0-9-1 over a raw socket to know a broker answers
(no pika import: it is used while waiting for a node to boot).  Checks that log in go through
pika, imported inside the functions that use it.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celeryctl.broker import BrokerUrl

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


@dataclass
class Handshake:
    ok: bool
    seconds: float
    product: str | None = None
    version: str | None = None
    error: str | None = None
    kind: str | None = None  # refused | timeout | dns | not_amqp | closed


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by peer")
        buf += chunk
    return buf


def _parse_table(data: bytes) -> dict[str, object]:
    """Parse an AMQP field table (just the types servers send in Connection.Start)."""
    out: dict[str, object] = {}
    i = 0
    while i < len(data):
        klen = data[i]
        key = data[i + 1 : i + 1 + klen].decode("utf-8", "replace")
        i += 1 + klen
        kind = chr(data[i])
        i += 1
        if kind == "S":
            (slen,) = struct.unpack(">I", data[i : i + 4])
            out[key] = data[i + 4 : i + 4 + slen].decode("utf-8", "replace")
            i += 4 + slen
        elif kind == "F":
            (tlen,) = struct.unpack(">I", data[i : i + 4])
            out[key] = _parse_table(data[i + 4 : i + 4 + tlen])
            i += 4 + tlen
        elif kind == "t":
            out[key] = bool(data[i])
            i += 1
        elif kind == "I":
            (out[key],) = struct.unpack(">i", data[i : i + 4])
            i += 4
        elif kind == "l":
            (out[key],) = struct.unpack(">q", data[i : i + 8])
            i += 8
        else:  # a type we do not need: stop rather than misparse
            break
    return out


def amqp_handshake(host: str, port: int, timeout: float = 2.0) -> Handshake:
    """Open TCP, send the AMQP header, read Connection.Start; report server product/version."""
    started = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(max(0.05, timeout - (time.monotonic() - started)))
            sock.sendall(AMQP_HEADER)
            header = _read_exact(sock, 7)
            if header[:4] == b"AMQP":
                return Handshake(False, time.monotonic() - started, error="protocol version mismatch", kind="not_amqp")
            ftype, _channel, size = struct.unpack(">BHI", header)
            if ftype != 1 or size > 1 << 20:
                return Handshake(False, time.monotonic() - started, error="not an AMQP server", kind="not_amqp")
            payload = _read_exact(sock, size + 1)[:-1]
            # class(2) method(2) version-major(1) version-minor(1) then server-properties table
            (tlen,) = struct.unpack(">I", payload[6:10])
            props = _parse_table(payload[10 : 10 + tlen])
            return Handshake(
                True,
                time.monotonic() - started,
                product=str(props.get("product")) if props.get("product") else None,
                version=str(props.get("version")) if props.get("version") else None,
            )
    except socket.gaierror as exc:
        return Handshake(False, time.monotonic() - started, error=f"cannot resolve {host}: {exc.strerror}", kind="dns")
    except ConnectionRefusedError:
        return Handshake(
            False, time.monotonic() - started, error=f"connection refused by {host}:{port}", kind="refused"
        )
    except TimeoutError:
        return Handshake(
            False,
            time.monotonic() - started,
            error=f"{host}:{port} did not answer within {timeout:g} s",
            kind="timeout",
        )
    except (ConnectionError, OSError, struct.error, IndexError) as exc:
        return Handshake(False, time.monotonic() - started, error=f"{host}:{port}: {exc}", kind="closed")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like the Erlang listener: a port in TIME_WAIT only is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) != 0


# --------------------------------------------------------------------------- pika-based checks


@dataclass
class AccessReport:
    """What a user can do on a vhost, found by logging in and trying it."""

    ok: bool  # logged in, and every permission that was checked works
    kind: str | None = None  # refused | timeout | dns | auth | vhost | closed | permissions
    error: str | None = None
    connect_seconds: float | None = None
    server: dict[str, str] | None = None
    configure: bool | None = None
    write: bool | None = None
    read: bool | None = None
    round_trip_ms: float | None = None
    blocked: bool = False

    @property
    def missing(self) -> list[str]:
        return [p for p in ("configure", "write", "read") if getattr(self, p) is False]

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "kind": self.kind,
            "error": self.error,
            "connect_seconds": self.connect_seconds,
            "server": self.server,
            "configure": self.configure,
            "write": self.write,
            "read": self.read,
            "missing": self.missing,
            "round_trip_ms": self.round_trip_ms,
        }


def classify_pika_error(exc: BaseException, host: str, port: int, vhost: str, user: str) -> tuple[str, str]:
    """(kind, message) for an exception from opening a pika connection."""
    import pika.exceptions as pe

    text = str(exc)
    if isinstance(exc, (pe.ProbableAuthenticationError, pe.AuthenticationError)) or "ACCESS_REFUSED" in text:
        return "auth", f"login refused for user '{user}' (wrong user name or password)"
    if isinstance(exc, pe.ProbableAccessDeniedError) or "NOT_ALLOWED" in text or "530" in text:
        if "not found" in text:
            return "vhost", f"virtual host '{vhost}' does not exist"
        return "vhost", f"user '{user}' has no access to virtual host '{vhost}'"
    if isinstance(exc, pe.AMQPConnectionError):
        nested = getattr(exc, "exceptions", None)
        inner = nested[-1] if nested else (exc.args[0] if exc.args else None)
        if isinstance(inner, BaseException) and type(inner).__name__.startswith("AMQPConnector") is False:
            return classify_pika_error(inner, host, port, vhost, user)
        low = repr(exc).lower()
        if "refused" in low:
            return "refused", f"connection refused by {host}:{port}"
        if "timed out" in low or "timeout" in low:
            return "timeout", f"{host}:{port} did not answer in time"
        if "name or service not known" in low or "gaierror" in low or "resolve" in low:
            return "dns", f"cannot resolve {host}"
        return "closed", f"cannot connect to {host}:{port}: {text or type(exc).__name__}"
    if isinstance(exc, ConnectionRefusedError):
        return "refused", f"connection refused by {host}:{port}"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout", f"{host}:{port} did not answer in time"
    if isinstance(exc, socket.gaierror):
        return "dns", f"cannot resolve {host}"
    return "closed", f"cannot connect to {host}:{port}: {type(exc).__name__}: {text}"


def check_access(url: str | BrokerUrl, timeout: float = 2.0, *, check_permissions: bool = True) -> AccessReport:
    """Log in as the URL's user on its vhost; optionally try configure, write and read
    (:func:`_try_permissions`)."""
    import pika
    import pika.exceptions as pe

    from celeryctl.broker import close_quietly, parse

    target = parse(url)
    params = target.pika_parameters(timeout)
    host, port, vhost, user = target.host, target.port, target.vhost, target.user
    started = time.monotonic()
    try:
        conn = pika.BlockingConnection(params)
    except (pe.AMQPError, OSError) as exc:  # every connection failure is classified
        kind, message = classify_pika_error(exc, host, port, vhost, user)
        return AccessReport(False, kind, message, connect_seconds=time.monotonic() - started)
    report = AccessReport(True, connect_seconds=time.monotonic() - started)
    try:
        props = conn._impl.server_properties or {}  # pika keeps them there
        report.server = {
            k: (v.decode() if isinstance(v, bytes) else str(v))
            for k, v in props.items()
            if k in ("product", "version", "cluster_name", "platform")
        }
        if check_permissions:
            _try_permissions(conn, report, timeout, user, vhost)
        return report
    except pe.ConnectionBlockedTimeout:
        return AccessReport(False, "blocked", "the broker blocked the connection (memory or disk alarm)", blocked=True)
    except (pe.AMQPError, OSError) as exc:  # the connection or a channel failed mid-check
        kind, message = classify_pika_error(exc, host, port, vhost, user)
        report.ok, report.kind, report.error = False, kind, message
        return report
    finally:
        close_quietly(conn)


def _channel_try(conn: Any, action: Any) -> bool | None:
    """Run ``action(channel)`` on a channel of its own: True, False when refused (403), None for 404."""
    import pika.exceptions as pe

    ch = conn.channel()
    try:
        action(ch)
        return True
    except pe.ChannelClosedByBroker as exc:
        if exc.reply_code == 403:
            return False
        if exc.reply_code == 404:
            return None
        raise
    finally:
        if ch.is_open:
            ch.close()


def _try_permissions(conn: Any, report: AccessReport, timeout: float, user: str, vhost: str) -> None:
    """Try configure, write and read on ``conn`` and record them in ``report``.

    A temporary exclusive queue ``celeryctl.check.<random>`` is declared (configure), a message
    published to it through the default exchange with a publisher confirm (write), and fetched
    back (read).  A refused step closes only its channel, so the others are still tried.
    """
    import uuid

    import pika.exceptions as pe

    qname = f"celeryctl.check.{uuid.uuid4().hex[:12]}"
    body = uuid.uuid4().hex.encode()
    t0 = time.monotonic()
    queue_channel = conn.channel()  # the exclusive queue lives while this connection does
    try:
        queue_channel.queue_declare(queue=qname, exclusive=True, auto_delete=True)
        report.configure = True
    except pe.ChannelClosedByBroker as exc:
        if exc.reply_code != 403:
            raise
        report.configure = False

    def publish(ch: Any) -> None:
        ch.confirm_delivery()
        ch.basic_publish("", qname, body, mandatory=False)

    report.write = _channel_try(conn, publish)
    got: list[bytes] = []

    def get(ch: Any) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _method, _props, data = ch.basic_get(qname, auto_ack=True)
            if data is not None:
                got.append(data)
                return
            if not (report.configure and report.write):
                return
            time.sleep(0.005)

    read = _channel_try(conn, get)
    # 404: the queue could not be made (no configure) but reading it was allowed.
    report.read = True if read is None else read
    if got and got[0] == body:
        report.round_trip_ms = (time.monotonic() - t0) * 1000
    elif report.configure and report.write and report.read:
        report.ok, report.kind, report.error = False, "closed", "the test message did not come back"
    if report.missing:
        report.ok = False
        report.kind = "permissions"
        report.error = f"user '{user}' lacks {' and '.join(report.missing)} permission on vhost '{vhost}'"


# --------------------------------------------------------------------------- TCP reachability


@dataclass
class TcpResult:
    """Whether ``host`` resolves and ``port`` accepts a TCP connection."""

    ok: bool
    seconds: float
    address: str | None = None  # the IP address that answered
    error: str | None = None
    kind: str | None = None  # refused | timeout | dns | closed


def tcp_connect(host: str, port: int, timeout: float = 2.0) -> TcpResult:
    """Resolve ``host`` and open (then close) a TCP connection to ``port`` within ``timeout``."""
    started = time.monotonic()
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return TcpResult(False, time.monotonic() - started, error=f"cannot resolve {host}: {exc.strerror}", kind="dns")
    last: TcpResult | None = None
    for family, socktype, proto, _canon, sockaddr in infos:
        remaining = timeout - (time.monotonic() - started)
        if remaining <= 0:
            break
        sock = socket.socket(family, socktype, proto)
        sock.settimeout(remaining)
        try:
            sock.connect(sockaddr)
            return TcpResult(True, time.monotonic() - started, address=str(sockaddr[0]))
        except ConnectionRefusedError:
            last = TcpResult(False, 0.0, str(sockaddr[0]), f"connection refused by {host}:{port}", "refused")
        except TimeoutError:
            last = TcpResult(
                False, 0.0, str(sockaddr[0]), f"{host}:{port} did not answer within {timeout:g} s", "timeout"
            )
        except OSError as exc:
            last = TcpResult(
                False, 0.0, str(sockaddr[0]), f"cannot connect to {host}:{port}: {exc.strerror or exc}", "closed"
            )
        finally:
            sock.close()
    if last is None:
        last = TcpResult(False, 0.0, None, f"{host}:{port} did not answer within {timeout:g} s", "timeout")
    last.seconds = time.monotonic() - started
    return last
