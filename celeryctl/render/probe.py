"""What ``celeryctl probe`` prints: one line (stdout), a hint on failure (stderr), or one JSON document.

Plain writes, no Rich: the worker probe is also printed by the fast path of the console script
(:mod:`celeryctl.entry`), which must not pay for importing Rich.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from celeryctl import render

if TYPE_CHECKING:
    from celeryctl.health import Verdict


def show_verdict(verdict: Verdict, as_json: bool) -> int:
    """Print the verdict; its exit code (0 or 1)."""
    if as_json:
        render.emit_json(verdict.to_dict())
    else:
        sys.stdout.write(verdict.line() + "\n")
        hint = verdict.hint()
        if not verdict.ok and hint:
            sys.stderr.write(f"hint: {hint}\n")
    return 0 if verdict.ok else 1


def show_broker(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        render.emit_json(render.ok_doc(**doc))
    else:
        sys.stdout.write(f"broker up: {doc['broker']} (AMQP handshake and login in {doc['ms']:.0f} ms)\n")
