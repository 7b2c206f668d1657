"""The app of the fault suite: every task that completes appends its id to a ledger file.

The ledger (``FAULT_LEDGER``, one id per line, appended with O_APPEND so that concurrent
processes never interleave a line) is the worker side's count: what completed, how often.
"""

from __future__ import annotations

import os
import time

from celery import Celery

import celeryctl

app = Celery("faultapp")
# The app's own queues are celeryctl's quorum queues (delivery limit 5, dead letters in
# QUEUE.dead), for every producer and worker that imports it: README "Reliability".
# FAULT_PLAIN=1: a plain Celery app, as before celeryctl.configure (classic queues).
# FAULT_MAX_DELIVERIES=N: another delivery limit (each delivery of a poison task costs a pool
# process, noticed up to 5 s later).
if os.environ.get("FAULT_PLAIN") != "1":
    celeryctl.configure(app, max_deliveries=int(os.environ.get("FAULT_MAX_DELIVERIES", "5")))


def _record(task_id: str | None) -> None:
    path = os.environ["FAULT_LEDGER"]
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{task_id}\n".encode())
    finally:
        os.close(fd)


@app.task(bind=True)
def record(self, i: int = 0, seconds: float = 0.0) -> int:  # type: ignore[no-untyped-def]
    """Sleep ``seconds``, then count this task as done."""
    if seconds:
        time.sleep(seconds)
    _record(self.request.id)
    return i


@app.task
def die() -> None:
    """A poison task: it kills the process that runs it, on every delivery."""
    os._exit(1)
