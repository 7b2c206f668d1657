"""The fault app plus one task for the worker's fault tests: ``mark`` says when and where it started.

``mark(seconds)`` appends ``ID PID`` to ``FAULT_LEDGER + ".started"`` as it starts (so a test
knows the task is running, and in which pool process), sleeps, then counts as done.
"""

from __future__ import annotations

import os
import time

from tests.faults.faultapp import _record, app, die, record

__all__ = ["app", "die", "mark", "record"]


@app.task(bind=True)
def mark(self, seconds: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    """Say that this task started (and in which process), sleep ``seconds``, then count as done."""
    fd = os.open(os.environ["FAULT_LEDGER"] + ".started", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{self.request.id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    if seconds:
        time.sleep(seconds)
    _record(self.request.id)
