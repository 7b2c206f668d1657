"""``celeryctl flower``: check the options, work out how Flower runs, and run it in this process.

Secrets (basic auth, the broker API URL) reach Flower through ``FLOWER_*`` variables of this
process and the broker URL through the app object: none of them appears in any argv.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeryctl.broker import ensure_reachable, is_loopback, mask_url, with_userinfo
from celeryctl.celeryapp import app_broker, run_celery
from celeryctl.errors import NotInstalledError, PermissionDeniedError, PortInUseError, UsageError
from celeryctl.rabbitmq.api import resolve_api

if TYPE_CHECKING:
    from celery import Celery

    from celeryctl.settings import Settings


@dataclass
class FlowerPlan:
    """How Flower will run: its own argv (no secrets), the env holding secrets, what to show."""

    argv: list[str]
    env: dict[str, str]
    url: str  # where to open it
    auth: bool
    broker_api: str | None  # masked

    def to_dict(self) -> dict[str, Any]:
        return {"argv": self.argv, "url": self.url, "auth": self.auth, "broker_api": self.broker_api}


def parse_basic_auth(value: str) -> list[tuple[str, str]]:
    """``USER:PASSWORD[,USER:PASSWORD...]`` as pairs; anything else is a usage error (exit 2)."""
    pairs = []
    for item in value.split(","):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise UsageError(
                "--basic-auth must be USER:PASSWORD (several separated by commas)",
                "pass it in CELERYCTL_FLOWER_BASIC_AUTH to keep the password out of the process list",
            )
        pairs.append((user, password))
    return pairs


def flower_plan(
    settings: Settings,
    broker_url: str,
    *,
    port: int = 5555,
    address: str = "127.0.0.1",
    basic_auth: str | None = None,
    unsafe_no_auth: bool = False,
    url_prefix: str | None = None,
) -> FlowerPlan:
    """Check the options and work out how to start Flower (raises before anything runs)."""
    if not 0 < port < 65536:
        raise UsageError(f"--port {port} is not a TCP port", "use a port between 1024 and 65535")
    if basic_auth:
        parse_basic_auth(basic_auth)
    check_listen(address, port)
    loopback = is_loopback(address)
    if not loopback and not basic_auth and not unsafe_no_auth:
        raise UsageError(
            f"refusing to serve Flower on {address or 'every address'} without authentication: "
            "anyone who can reach it could see task arguments and shut workers down",
            "add --basic-auth USER:PASSWORD (or CELERYCTL_FLOWER_BASIC_AUTH), bind to 127.0.0.1, "
            "or pass --unsafe-no-auth if a proxy in front does the authentication",
        )
    argv = [f"--port={port}", f"--address={address}"]
    if url_prefix:
        argv.append(f"--url_prefix={url_prefix}")
    env: dict[str, str] = {}
    if basic_auth:
        env["FLOWER_BASIC_AUTH"] = basic_auth
    broker_api = None
    api = resolve_api(settings, broker_url)
    if api is not None:
        # Flower reads queue lengths through the management API (the configured one, else
        # celeryctl's node's), logged in as resolve_api decides; the URL lives in its environment.
        env["FLOWER_BROKER_API"] = with_userinfo(api.url.base + "api/", api.user, api.secrets[0])
        broker_api = mask_url(env["FLOWER_BROKER_API"])
    shown = address if address not in ("", "0.0.0.0", "::") else "127.0.0.1"  # display only
    if ":" in shown:
        shown = f"[{shown}]"
    prefix = f"/{url_prefix.strip('/')}/" if url_prefix else "/"
    return FlowerPlan(argv, env, f"http://{shown}:{port}{prefix}", bool(basic_auth), broker_api)


def check_listen(address: str, port: int) -> None:
    """Refuse an address that is not on this machine, or a port that is taken, before Flower starts.

    Binds (and closes) the sockets Flower would bind, the way tornado does (``SO_REUSEADDR``):
    an unknown host name is a usage error (exit 2), an address of another machine too, a port in
    use is exit 9 naming it, a port below 1024 without root exit 5.
    """
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(address or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(
            f"--address {address}: the name does not resolve ({exc.strerror})",
            "use an address of this machine, e.g. 127.0.0.1",
        ) from None
    for family, kind, proto, _name, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"port {port} on {address or 'every address'} is already in use; Flower cannot listen there",
                    f"pick another one: --port {port + 1}, or stop what listens on {port}",
                    details={"port": port, "address": address},
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UsageError(
                    f"--address {address} is not an address of this machine",
                    "use one of this machine's addresses, e.g. 127.0.0.1 (or 0.0.0.0 for every one)",
                ) from None
            if exc.errno == errno.EACCES:
                raise PermissionDeniedError(
                    f"not allowed to listen on port {port} (ports below 1024 need root)", "use --port 5555"
                ) from None
            raise
        finally:
            sock.close()


def require_flower() -> None:
    """Raise :class:`~celeryctl.errors.NotInstalledError` (exit 4) unless Flower can be imported."""
    try:
        import flower  # noqa: F401
    except ImportError:
        raise NotInstalledError(
            "Flower is not installed",
            "pip install 'celeryctl[flower]'",
        ) from None


def run_flower(app: Celery, plan: FlowerPlan) -> int:
    """Run Flower in this process until it is stopped (SIGTERM or Ctrl-C); return its exit code.

    Secrets (basic auth, broker API URL) go through ``FLOWER_*`` variables of this process, the
    broker URL through the app object: none of them appears in any argv.
    """
    require_flower()
    ensure_reachable(app_broker(app))
    os.environ.update(plan.env)
    import flower.command

    # Flower's SIGTERM handler raises SystemExit wherever the main thread happens to be, which
    # ends in a traceback when that is inside tornado or a thread pool.  This one stops the
    # event loop instead, so Flower returns as it does after Ctrl-C; before the loop exists,
    # SystemExit(0) leaves through run_celery below.
    flower.command.sigterm_handler = _stop_on_sigterm  # type: ignore[attr-defined]
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        # Flower's own option parser must not see celeryctl's argv.
        return run_celery(app, ["--quiet", "flower", *plan.argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_on_sigterm(_signum: int, _frame: object) -> None:
    from tornado.ioloop import IOLoop

    loop = IOLoop.current(instance=False)
    if loop is None:
        raise SystemExit(0)
    loop.add_callback(loop.stop)  # thread-safe (call_soon_threadsafe); Python runs handlers between bytecodes
