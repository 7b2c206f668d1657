"""The fault app plus one task for ``tests/faults/test_dead.py``: it refuses to run while a flag file exists.

``flagged(path)`` rejects itself (``Reject(requeue=False)``: RabbitMQ dead-letters it with reason
``rejected``) while ``path`` exists, and is counted in the ledger once it does not: the simplest
real way to make a task that dies, then succeeds when it is replayed.
"""

from __future__ import annotations

import os

from celery.exceptions import Reject

from tests.faults.faultapp import _record, app, die, record

__all__ = ["app", "die", "flagged", "record"]


@app.task(bind=True)
def flagged(self, path: str) -> str:  # type: ignore[no-untyped-def]
    """Dead-lettered while ``path`` exists; counted as done once it is gone."""
    if os.path.exists(path):
        raise Reject(f"flag {path} exists", requeue=False)
    _record(self.request.id)
    return path
