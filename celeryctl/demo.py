"""The built-in demo Celery app, used when no ``-A`` is given.

Its tasks cover what the tutorial shows and what a live display needs to be tried on:
``add``, ``mul``, ``longtime_add`` (the tutorial's task, reporting ``PROGRESS`` with
``current``/``total`` every second), ``sleep``, ``fail`` (raises) and ``flaky`` (fails a
given number of times, retrying with exponential backoff).

The broker and result backend are filled in by :func:`celeryctl.celeryapp.load_app` from
celeryctl's settings; importing this module does not connect anywhere.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, Task

app = Celery("celeryctl.demo")
app.conf.update(
    # celeryctl alone declares the demo's queues: quorum by default (celeryctl.topology).
    celeryctl_owned=True,
    task_track_started=True,
    result_extended=False,
    # JSON only: the demo's results are plain numbers and strings.
    accept_content=["json"],
    task_serializer="json",
    result_serializer="json",
)

PROGRESS = "PROGRESS"


class FlakyError(RuntimeError):
    """Raised by ``flaky`` on each planned failure."""


class DemoFailure(RuntimeError):
    """Raised by ``fail``."""


@app.task(name="celeryctl.demo.add")
def add(x: Any, y: Any) -> Any:
    """Return x + y."""
    return x + y


@app.task(name="celeryctl.demo.mul")
def mul(x: Any, y: Any) -> Any:
    """Return x * y."""
    return x * y


@app.task(name="celeryctl.demo.longtime_add", bind=True)
def longtime_add(self: Task, x: Any, y: Any, seconds: int = 5) -> Any:
    """The tutorial's task: sleep ``seconds`` seconds, reporting progress each second, then x + y."""
    total = max(0, int(seconds))
    for current in range(total):
        self.update_state(state=PROGRESS, meta={"current": current, "total": total})
        time.sleep(1)
    self.update_state(state=PROGRESS, meta={"current": total, "total": total})
    return x + y


@app.task(name="celeryctl.demo.sleep")
def sleep(seconds: float) -> float:
    """Sleep ``seconds`` seconds and return them."""
    time.sleep(float(seconds))
    return float(seconds)


@app.task(name="celeryctl.demo.fail")
def fail(message: str = "failed on purpose") -> None:
    """Raise an error carrying ``message``."""
    raise DemoFailure(str(message))


@app.task(name="celeryctl.demo.flaky", bind=True, max_retries=None)
def flaky(self: Task, failures: int = 2, backoff: float = 0.5) -> int:
    """Fail ``failures`` times, retrying after backoff * 2**attempt seconds; then return the attempts.

    The count lives in the message (``self.request.retries``), so it survives the retries
    whichever worker process runs them.
    """
    attempt = self.request.retries
    if attempt < int(failures):
        raise self.retry(
            exc=FlakyError(f"planned failure {attempt + 1} of {failures}"),
            countdown=float(backoff) * (2**attempt),
        )
    return attempt + 1
