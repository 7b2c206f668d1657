"""Scalar values a user types, checked once: durations, ports and queue names.

Each function returns the clean value or raises :class:`~celeryctl.errors.UsageError` with a
message naming what was given and a hint.  ``cli/options.py`` turns them into Typer parsers (so a
bad flag is a usage error, exit 2, before anything runs) and ``settings.py`` uses them for values
from the environment and the settings file.
"""

from __future__ import annotations

import math

from celeryctl.errors import UsageError

MAX_QUEUE_NAME_BYTES = 255  # AMQP 0-9-1 short string
MIN_PORT, MAX_PORT = 1, 65535


def seconds(value: object, what: str = "the duration", *, minimum: float = 0.0, allow_zero: bool = True) -> float:
    """A finite number of seconds, at least ``minimum`` (more than it when ``allow_zero`` is false)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a number of seconds, got {value!r}", "for example 2.5") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise UsageError(f"{what} must be a finite number of seconds, got {value!r}", "for example 2.5")
    if number < minimum or (not allow_zero and number <= minimum):
        bound = f"at least {minimum:g}" if allow_zero else f"more than {minimum:g}"
        raise UsageError(f"{what} must be {bound} seconds, got {value!r}", f"for example {max(minimum, 1.0) * 2:g}")
    return number


def port(value: object, what: str = "the port", *, low: int = MIN_PORT, high: int = MAX_PORT) -> int:
    """A TCP port number between ``low`` and ``high``."""
    try:
        number = int(str(value).strip(), 10)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a port number, got {value!r}", f"use a number from {low} to {high}") from None
    if not low <= number <= high:
        raise UsageError(f"{what} {number} is out of range", f"use a number from {low} to {high}")
    return number


def count(value: object, what: str = "the number", *, low: int = 1, high: int | None = None) -> int:
    """A whole number from ``low`` to ``high`` (no upper bound when ``high`` is None)."""
    try:
        number = int(str(value).strip(), 10)
    except (TypeError, ValueError):
        raise UsageError(f"{what} must be a whole number, got {value!r}", f"for example {low}") from None
    if number < low or (high is not None and number > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise UsageError(f"{what} must be {bound}, got {number}")
    return number


def queue_name(value: str, what: str = "the queue name") -> str:
    """A queue name RabbitMQ accepts: non-empty, at most 255 bytes of UTF-8, no NUL."""
    if value == "":
        raise UsageError(f"{what} must not be empty", "name the queue, e.g. -Q celery")
    if "\x00" in value:
        raise UsageError(f"{what} {value!r} contains a NUL character", "use printable characters only")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_QUEUE_NAME_BYTES:
        raise UsageError(
            f"{what} is {size} bytes long, the limit is {MAX_QUEUE_NAME_BYTES}", "use a shorter queue name"
        )
    return value


def worker_name(value: str, what: str = "the worker name") -> str:
    """A worker's node name (``w1`` or ``w1@host``).  It names its health record's file, so it
    holds no path separator, does not start with a dot and fits a file name."""
    if not value or "/" in value or "\0" in value or value.startswith(".") or len(value.encode()) > 250:
        shown = value[:40] + ("..." if len(value) > 40 else "")
        raise UsageError(f"{what} {shown!r} is not a node name", "use NAME@HOST or NAME, as given to celeryctl worker -n")
    return value
