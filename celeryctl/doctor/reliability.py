"""Checks of the queues' shape: their type (:mod:`celeryctl.topology`) and their dead letters.

Both run on one pika connection.  ``queue types``: a queue of the app that already exists with
other arguments than the ones ``worker`` and ``submit`` declare (a classic ``celery`` where the
settings say quorum) makes them fail; doctor says so first, with the way out.  ``dead letters``:
messages waiting in a queue's dead-letter queue (``NAME.dead``).  Nothing new is declared for a
queue that does not exist.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celeryctl import topology
from celeryctl.broker import QueueDepth, app_queue_names, close_quietly, connect, queue_depths
from celeryctl.doctor.check import FAIL, OK, WARN, Check
from celeryctl.errors import CeleryctlError

if TYPE_CHECKING:
    from celery import Celery

    from celeryctl.broker import BrokerUrl
    from celeryctl.settings import Settings


@dataclass
class QueuePlan:
    """Which of the app's queues doctor checks, and against which policy."""

    policy: topology.QueuePolicy
    checked: list[str]  # queues whose arguments celeryctl (or Celery, for classic) declares
    dead: list[str]  # dead-letter queues to count
    own: bool = False  # the app lists its own task_queues: their shape is the app's


def plan_for(app: Celery, settings: Settings) -> QueuePlan:
    """The app configured as ``worker`` configures it (:func:`topology.configure_app`)."""
    pol = topology.policy(settings)
    names = app_queue_names(app)
    own = bool(app.conf.task_queues) and not topology.managed_queues(app)
    managed = topology.configure_app(app, pol, names)
    if managed:  # celeryctl's shape: set by settings or by celeryctl.configure(app) in the app
        return QueuePlan(topology.policy_of(app), managed, [topology.dead_queue(n) for n in managed])
    if own:
        return QueuePlan(pol, [], [], own=True)
    # What the app declares itself (Celery's classic); dead letters of an earlier quorum setup count too.
    classic = topology.QueuePolicy("classic", pol.max_deliveries, pol.explicit)
    return QueuePlan(classic, names, [topology.dead_queue(n) for n in names])


def check_queue_shape(app: Celery, target: BrokerUrl, settings: Settings) -> dict[str, Check]:
    """``queue_types`` and ``dead_letters`` on one pika connection."""
    import pika.exceptions

    started = time.monotonic()
    plan = plan_for(app, settings)
    try:
        conn = connect(target, timeout=settings.doctor_timeout)
    except CeleryctlError as exc:
        fail = Check("queue_types", FAIL, time.monotonic() - started, exc.message, exc.hint)
        return {"queue_types": fail, "dead_letters": Check("dead_letters", FAIL, 0.0, exc.message, exc.hint)}
    # A queue the user may not declare (ConfigError, exit-7 error), or the broker failing.
    expected: tuple[type[BaseException], ...] = (CeleryctlError, pika.exceptions.AMQPError, OSError)
    out: dict[str, Check] = {}
    try:
        try:
            mismatches = topology.check_existing(conn, plan.checked, plan.policy)
        except expected as exc:
            out["queue_types"] = _broken("queue_types", exc, started)
        else:
            out["queue_types"] = queue_types_check(plan, mismatches, time.monotonic() - started)
        begun = time.monotonic()
        try:
            depths = queue_depths(conn, plan.dead)
        except expected as exc:
            out["dead_letters"] = _broken("dead_letters", exc, begun)
        else:
            out["dead_letters"] = dead_letters_check(depths, time.monotonic() - begun)
    finally:
        close_quietly(conn)
    return out


def _broken(name: str, exc: BaseException, started: float) -> Check:
    if isinstance(exc, CeleryctlError):
        return Check(name, FAIL, time.monotonic() - started, exc.message, exc.hint)
    return Check(name, FAIL, time.monotonic() - started, f"{type(exc).__name__}: {exc}")


def queue_types_check(plan: QueuePlan, mismatches: list[topology.Mismatch], seconds: float) -> Check:
    """FAIL for each queue that exists with other arguments (RabbitMQ would refuse the worker)."""
    pol = plan.policy
    data: dict[str, Any] = {**pol.to_dict(), "queues": plan.checked, "mismatches": [m.to_dict() for m in mismatches]}
    if mismatches:
        errors = [topology.mismatch_error(m, pol) for m in mismatches]
        hints = list(dict.fromkeys(e.hint for e in errors if e.hint))
        return Check("queue_types", FAIL, seconds, "; ".join(e.message for e in errors), "; ".join(hints), data)
    if plan.own:
        return Check(
            "queue_types", OK, seconds, "the app declares its own queues (task_queues): not checked", data=data
        )
    names = ", ".join(plan.checked) or "none"
    if not pol.quorum:
        return Check(
            "queue_types",
            OK,
            seconds,
            f"classic queues ({names}): no delivery limit, a task that kills its worker is redelivered "
            "forever; quorum queues bound it: celeryctl.configure(app) in the app's module, or "
            'queue_type = "quorum" when every producer is celeryctl',
            data=data,
        )
    return Check(
        "queue_types",
        OK,
        seconds,
        f"quorum ({names}): at most {pol.max_deliveries} deliveries, then {topology.DEAD_SUFFIX}",
        data=data,
    )


def dead_letters_check(depths: list[QueueDepth], seconds: float) -> Check:
    """WARN when a dead-letter queue holds messages."""
    found = [d for d in depths if d.exists]
    data = {"queues": [{"name": d.name, "messages": d.messages} for d in found]}
    full = [d for d in found if d.messages]
    if full:
        parts = ", ".join(f"'{d.name}' ({d.messages})" for d in full)
        origins = [d.name[: -len(topology.DEAD_SUFFIX)] for d in full]
        return Check(
            "dead_letters",
            WARN,
            seconds,
            f"dead-lettered messages wait in {parts}",
            "; ".join(f"look: celeryctl dead {o}; replay: celeryctl dead replay --all {o}" for o in origins),
            data,
        )
    if not found:
        return Check("dead_letters", OK, seconds, "no dead-letter queue yet", data=data)
    return Check("dead_letters", OK, seconds, ", ".join(f"{d.name}: 0" for d in found), data=data)
