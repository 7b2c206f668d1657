"""``celeryctl flower``: check the options, work out how Flower runs, and run it in this process.

Secrets (basic auth, the broker API URL) reach Flower through ``FLOWER_*`` variables of this
process and the broker URL through the app object: none of them appears in any argv.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeryctl.broker import BrokerUrl, ensure_reachable, is_loopback, mask_url, own_management_url, with_userinfo
from celeryctl.celeryapp import app_broker
from celeryctl.errors import NotInstalledError, UsageError

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
    mgmt = own_management_url(settings, broker_url)
    if mgmt:
        # Flower reads queue lengths through the management API, as the broker URL's user.
        target = BrokerUrl.parse(broker_url)
        api = mgmt.rstrip("/") + "/api/"
        env["FLOWER_BROKER_API"] = with_userinfo(api, target.user, target.password or "guest")
        broker_api = mask_url(env["FLOWER_BROKER_API"])
    shown = address if address not in ("", "0.0.0.0", "::") else "127.0.0.1"  # display only
    if ":" in shown:
        shown = f"[{shown}]"
    prefix = f"/{url_prefix.strip('/')}/" if url_prefix else "/"
    return FlowerPlan(argv, env, f"http://{shown}:{port}{prefix}", bool(basic_auth), broker_api)


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
    # Flower's own option parser must not see celeryctl's argv.
    code = app.start(["--quiet", "flower", *plan.argv])
    return int(code or 0)
