"""The app of ``test_submit_quorum``: each task appends when it ran and the ETA it carried to a file.

One line per run, ``ID RAN_AT ETA`` (UNIX seconds; ETA ``-`` when the message had none), appended
with O_APPEND (``STAMPS``) so that concurrent pool processes never interleave a line.
"""

from __future__ import annotations

import os
import time

from celery import Celery

import celeryctl

app = Celery("submit_quorum_app")
celeryctl.configure(app)  # quorum queues for every producer and worker of this app


@app.task(bind=True)
def stamp(self) -> None:  # type: ignore[no-untyped-def]
    """Note when this task ran, and the ETA its message carried."""
    eta = self.request.eta
    if isinstance(eta, str):
        from datetime import datetime

        eta = datetime.fromisoformat(eta)
    line = f"{self.request.id} {time.time():.3f} {eta.timestamp() if eta else '-'}\n"
    fd = os.open(os.environ["STAMPS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
