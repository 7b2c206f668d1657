"""Check 12: the installed celery, kombu, amqp and pika, the broker's version, and known-bad combinations."""

from __future__ import annotations

import sys
import time
from typing import Any

from celeryctl.doctor.check import OK, WARN, Check


def _vt(version: str | None) -> tuple[int, ...]:
    out: list[int] = []
    for part in (version or "").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def version_problems(
    celery_v: str | None, kombu_v: str | None, server_v: str | None, python: tuple[int, int]
) -> tuple[list[str], list[str]]:
    """(warnings, notes) for known-bad combinations; a small table, not an exhaustive one."""
    warns: list[str] = []
    notes: list[str] = []
    c, k, s = _vt(celery_v), _vt(kombu_v), _vt(server_v)
    if c and k and c[:1] == (5,) and c >= (5, 3) and k[:2] < c[:2]:
        warns.append(
            f"kombu {kombu_v} is older than celery {celery_v} expects (kombu {c[0]}.{c[1]}): pip install -U kombu"
        )
    if c and c < (5, 3) and python >= (3, 12):
        warns.append(f"celery {celery_v} does not support Python {python[0]}.{python[1]}: pip install -U celery")
    if s and s < (3, 8):
        warns.append(f"RabbitMQ {server_v} is out of support (no quorum queues): upgrade to 3.13 or later")
    if s and s >= (3, 8, 15):
        notes.append(
            "RabbitMQ closes a channel whose message stays unacknowledged longer than consumer_timeout "
            "(30 min by default): tasks with a longer ETA/countdown, or long tasks with acks_late, need it raised"
        )
    if s and s >= (4, 0):
        notes.append(
            "RabbitMQ 4 deprecates transient non-exclusive queues (celery's pidbox and rpc:// reply queues use them)"
        )
    return warns, notes


def package_version(name: str) -> str | None:
    """An installed distribution's version, from its metadata (nothing is imported), or None."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_versions(server_product: str | None, server_v: str | None) -> Check:
    """Versions of the client libraries (from their metadata: nothing is imported) and of the server."""
    started = time.monotonic()
    found = {name: package_version(name) for name in ("celery", "kombu", "amqp", "pika")}
    py = sys.version_info[:2]
    warns, notes = version_problems(found["celery"], found["kombu"], server_v, (py[0], py[1]))
    data: dict[str, Any] = {
        **found,
        "server": server_v,
        "server_product": server_product,
        "python": sys.version.split()[0],
    }
    data["notes"] = notes
    shown = ", ".join(f"{n} {v}" for n, v in found.items() if v)
    server = f"{server_product or 'RabbitMQ'} {server_v}" if server_v else "server unknown"
    detail = f"{shown}; {server}"
    if warns:
        return Check("versions", WARN, time.monotonic() - started, f"{detail}; " + "; ".join(warns), warns[0], data)
    return Check("versions", OK, time.monotonic() - started, detail, data=data)
