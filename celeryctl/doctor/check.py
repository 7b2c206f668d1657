"""The vocabulary of doctor: a :class:`Check`, its four statuses and the checks' titles, in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"

#: The checks, in the order they are reported, with their titles.
TITLES: dict[str, str] = {
    "settings": "settings",
    "tcp": "TCP connection",
    "handshake": "AMQP handshake",
    "auth": "authentication",
    "vhost": "virtual host",
    "permissions": "permissions",
    "guest": "guest login",
    "management": "management API",
    "alarms": "resource alarms",
    "cluster": "cluster members",
    "quorum": "quorum queues",
    "app": "Celery app",
    "serializer": "serializer",
    "backend": "result backend",
    "workers": "workers",
    "queues": "queue depths",
    "queue_types": "queue types",
    "dead_letters": "dead letters",
    "versions": "versions",
    "compat": "compatibility",
    "local_node": "local node",
}


@dataclass
class Check:
    """The outcome of one check."""

    name: str
    status: str  # ok | warn | fail | skip
    seconds: float = 0.0
    detail: str = ""
    hint: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return TITLES.get(self.name, self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "seconds": round(self.seconds, 4),
            "detail": self.detail,
            "hint": self.hint,
            "data": self.data,
        }


def skip(name: str, why: str) -> Check:
    """A check that could not run because an earlier one failed (never a second failure)."""
    return Check(name, SKIP, 0.0, why)
