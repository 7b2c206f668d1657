"""celeryctl: set up and run Celery on RabbitMQ with one command-line tool."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__version__ = "0.1.0"


def configure(app: Any, *, max_deliveries: int = 5, queues: Iterable[str] = ()) -> Any:
    """Give a Celery app celeryctl's quorum queues, in the app's own module (README "Reliability").

    ``celeryctl.configure(app)`` makes every producer that imports the app and every worker declare
    the same queues: quorum, at most ``max_deliveries`` deliveries, dead letters in ``QUEUE.dead``.
    """
    from celeryctl.topology import configure as _configure

    return _configure(app, max_deliveries=max_deliveries, queues=queues)
