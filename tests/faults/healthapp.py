"""The app of the health tests: a long task, and a beat schedule that sends a no-op every second
to a queue no worker consumes (so that beat's work never reaches the busy worker)."""

from __future__ import annotations

import time

from celery import Celery

app = Celery("healthapp")
app.conf.beat_schedule = {
    "every-second": {"task": "healthapp.noop", "schedule": 1.0, "options": {"queue": "healthapp.beat"}},
}


@app.task(name="healthapp.sleep")
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(name="healthapp.noop")
def noop() -> None:
    return None
