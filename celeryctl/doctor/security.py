"""Security checks: an app that accepts pickle, and ``guest`` logging in to a broker off loopback.

pickle lets whoever can publish to the broker run code in every worker.  RabbitMQ lets ``guest``
(password ``guest``) in from loopback only by default (``loopback_users``); a broker that lets it
in from elsewhere is open to anyone who can reach its port.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from celeryctl.broker import is_loopback
from celeryctl.doctor.check import OK, WARN, Check

if TYPE_CHECKING:
    from celery import Celery

    from celeryctl.broker import BrokerUrl
    from celeryctl.probe import AccessReport

#: What kombu calls pickle: its serializer name and its content type.
PICKLE = ("pickle", "application/x-python-serialize")
GUEST = ("guest", "guest")


def _is_pickle(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() in PICKLE


def _pickle_values(value: Any) -> bool:
    if isinstance(value, str):
        return _is_pickle(value)
    return isinstance(value, Iterable) and any(_is_pickle(v) for v in value)


def check_serializer(app: Celery) -> Check:
    """WARN when the app accepts or sends pickle."""
    started = time.monotonic()
    conf = app.conf
    keys = ("accept_content", "result_accept_content", "task_serializer", "result_serializer", "event_serializer")
    found = [key for key in keys if _pickle_values(conf.get(key))]
    data = {key: _shown(conf.get(key)) for key in keys}
    if found:
        return Check(
            "serializer",
            WARN,
            time.monotonic() - started,
            f"the app accepts pickle ({', '.join(found)}): anyone who can publish to its broker can run code "
            "in its workers",
            "use json: accept_content = ['json'], task_serializer = result_serializer = 'json' "
            "(pass non-JSON arguments by reference: an id, a path)",
            data,
        )
    return Check("serializer", OK, time.monotonic() - started, f"accepts {', '.join(_names(conf))}", data=data)


def _shown(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return [str(v) for v in value] if isinstance(value, Iterable) else str(value)


def _names(conf: Any) -> list[str]:
    accept = conf.get("accept_content")
    values = [accept] if isinstance(accept, str) else list(accept or ["json"])
    return [str(v) for v in values]


def guest_url(target: BrokerUrl) -> BrokerUrl:
    """``target`` with ``guest:guest`` (same hosts, port, vhost and TLS options)."""
    url = target.with_credentials(*GUEST)
    return dataclasses.replace(target, raw=url, urls=(url,), user=GUEST[0], password=GUEST[1])


def check_guest(
    target: BrokerUrl,
    timeout: float,
    *,
    login: Callable[[BrokerUrl, float], AccessReport] | None = None,
) -> Check:
    """WARN when the broker is not on loopback and ``guest:guest`` can log in to it.

    On loopback nothing is tried: RabbitMQ's default lets ``guest`` in from there only, and only
    this machine can reach it.  ``login`` is the AMQP login (:func:`celeryctl.probe.check_access`).
    """
    started = time.monotonic()
    hosts = [h.host for h in target.hosts]
    if all(is_loopback(h) for h in hosts):
        return Check("guest", OK, 0.0, "the broker is on loopback: not tried", data={"tried": False})
    if (target.user, target.password) == GUEST:
        ok = True  # the URL's own login, checked by the authentication check
    else:
        report = (login or _login)(guest_url(target), timeout)
        ok = report.ok or report.kind in ("permissions", "blocked")  # logged in, whatever it could do
    where = f"{target.host}:{target.port}"
    data = {"tried": True, "host": target.host, "port": target.port, "vhost": target.vhost, "logged_in": ok}
    if ok:
        return Check(
            "guest",
            WARN,
            time.monotonic() - started,
            f"guest:guest can log in to {where} (vhost '{target.vhost}'), which is not on loopback",
            "delete the guest user (rabbitmqctl delete_user guest), or keep loopback_users.guest = true "
            "(RabbitMQ's default); use a user of your own: celeryctl setup-broker",
            data,
        )
    return Check("guest", OK, time.monotonic() - started, f"guest:guest cannot log in to {where}", data=data)


def _login(url: BrokerUrl, timeout: float) -> AccessReport:
    from celeryctl.probe import check_access

    return check_access(url, timeout, check_permissions=False)
