"""Check "compatibility": combinations of RabbitMQ, celery, kombu and settings known to break.

Written down from the release notes, tested as a pure function (:func:`compat_problems`):

* RabbitMQ 4.0 removed classic mirrored queues: a policy with ``ha-mode`` no longer replicates
  anything (4.x refuses such a policy; one kept from 3.x is ignored). FAIL on 4.x, WARN on 3.x.
* RabbitMQ 4.3 refuses transient (non-durable) non-exclusive queues by default (deprecated
  feature ``transient_nonexcl_queues``).  Celery declares its remote-control (pidbox) and event
  queues so before 5.6; 5.6 added ``control_queue_exclusive`` / ``event_queue_exclusive`` (off by
  default), 5.7 turns them on.  celery < 5.7's ``rpc://`` reply queue is transient too.
* RabbitMQ 4.3 refuses global QoS (``basic.qos`` with ``global=true``, feature ``global_qos``).
  kombu < 5.7 tells the worker to ask for it on any RabbitMQ >= 3.3, unless celery >= 5.5 sees a
  quorum queue among the app's queues (``worker_detect_quorum_queues``, on by default).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from celeryctl.doctor.check import FAIL, OK, WARN, Check
from celeryctl.doctor.versions import _vt, package_version

PERMIT = "deprecated_features.permit.{feature} = true in every node's rabbitmq.conf"


@dataclass(frozen=True)
class Problem:
    status: str  # warn | fail
    message: str
    hint: str


@dataclass
class AppSettings:
    """The app's settings that matter here; None: not set (Celery's default for its version)."""

    control_queue_exclusive: bool | None = None
    event_queue_exclusive: bool | None = None
    worker_detect_quorum_queues: bool | None = None
    quorum_queues: bool = False  # the worker consumes at least one quorum queue
    rpc_backend: bool = False


def app_settings(app: Any, quorum_queues: bool) -> AppSettings:
    """Read the settings from a loaded Celery app (``app.conf``)."""
    conf = app.conf

    def get(key: str) -> bool | None:
        value = conf.get(key)
        return None if value is None else bool(value)

    backend = str(conf.get("result_backend") or "")
    return AppSettings(
        get("control_queue_exclusive"),
        get("event_queue_exclusive"),
        get("worker_detect_quorum_queues"),
        quorum_queues,
        backend.startswith("rpc"),
    )


def compat_problems(
    server_v: str | None,
    celery_v: str | None,
    kombu_v: str | None,
    app: AppSettings | None,
    ha_policies: list[str],
) -> list[Problem]:
    """The known-bad combinations among these; [] when none is known."""
    s, c, k = _vt(server_v), _vt(celery_v), _vt(kombu_v)
    out: list[Problem] = []
    if ha_policies:
        names = ", ".join(ha_policies)
        clear = "; then rabbitmqctl clear_policy NAME (or drop ha-* from it)"
        if s >= (4, 0):
            out.append(
                Problem(
                    FAIL,
                    f"policy {names} mirrors classic queues (ha-mode): RabbitMQ {server_v} has no classic mirrored "
                    "queues (removed in 4.0), so those queues are not replicated",
                    "use quorum queues: celeryctl convert-queue QUEUE --to quorum" + clear,
                )
            )
        elif s:
            out.append(
                Problem(
                    WARN,
                    f"policy {names} mirrors classic queues (ha-mode): RabbitMQ 4.0 removed classic mirrored queues "
                    f"(this is {server_v}); upgrading breaks it",
                    "move to quorum queues before upgrading: celeryctl convert-queue QUEUE --to quorum" + clear,
                )
            )
    if not s or s < (4, 0) or not c:
        return out
    refuses = s >= (4, 3)
    when = f"RabbitMQ {server_v} refuses" if refuses else f"RabbitMQ 4.3 refuses (this is {server_v}, deprecated)"
    transient = f"{when} transient non-exclusive queues by default (transient_nonexcl_queues)"
    level = WARN
    if c < (5, 6):
        out.append(
            Problem(
                level,
                f"celery {celery_v} declares its remote-control and event queues transient and non-exclusive: "
                f"{transient}",
                "pip install -U 'celery>=5.7' (5.6: set control_queue_exclusive = event_queue_exclusive = True), "
                "or " + PERMIT.format(feature="transient_nonexcl_queues"),
            )
        )
    elif app is not None:
        default = c >= (5, 7)  # 5.6 added both settings off; 5.7 turned them on
        off = [
            name
            for name, value in (
                ("control_queue_exclusive", app.control_queue_exclusive),
                ("event_queue_exclusive", app.event_queue_exclusive),
            )
            if not (default if value is None else value)
        ]
        if off:
            out.append(
                Problem(
                    level,
                    f"{' and '.join(off)} off (celery {celery_v}): its queues are transient and non-exclusive; "
                    f"{transient}",
                    f"set {' = '.join(off)} = True in the app's config",
                )
            )
    if app is not None and app.rpc_backend and c < (5, 7):
        out.append(
            Problem(
                level,
                f"celery {celery_v}'s rpc:// result backend declares its reply queue transient and non-exclusive: "
                f"{transient}",
                "pip install -U 'celery>=5.7', or " + PERMIT.format(feature="transient_nonexcl_queues"),
            )
        )
    if k and k < (5, 7):
        detects = c >= (5, 5) and app is not None and app.quorum_queues and app.worker_detect_quorum_queues is not False
        if not detects:
            why = (
                "worker_detect_quorum_queues is off"
                if app is not None and app.quorum_queues and app.worker_detect_quorum_queues is False and c >= (5, 5)
                else "the worker consumes no quorum queue"
                if c >= (5, 5)
                else f"celery {celery_v} cannot tell (worker_detect_quorum_queues came in 5.5)"
            )
            qos_when = f"RabbitMQ {server_v} refuses" if refuses else f"RabbitMQ 4.3 refuses (this is {server_v})"
            out.append(
                Problem(
                    level,
                    f"kombu {kombu_v} makes the worker ask for global QoS ({why}): {qos_when} it (global_qos)",
                    "pip install -U 'kombu>=5.7', or consume quorum queues with worker_detect_quorum_queues = True "
                    "(celery >= 5.5)",
                )
            )
    return out


def check_compat(
    server_v: str | None, app: AppSettings | None, policies: list[dict[str, Any]] | None, source: str | None
) -> Check:
    """The compatibility check from the server's version, the installed celery and kombu, the
    app's settings and the vhost's policies (None: not asked)."""
    started = time.monotonic()
    celery_v, kombu_v = package_version("celery"), package_version("kombu")
    ha = ha_policy_names(policies or [])
    problems = compat_problems(server_v, celery_v, kombu_v, app, ha)
    data: dict[str, Any] = {
        "server": server_v,
        "celery": celery_v,
        "kombu": kombu_v,
        "policies_asked": policies is not None,
        "ha_policies": ha,
        "problems": [p.message for p in problems],
    }
    seconds = time.monotonic() - started
    if not problems:
        asked = f"policies asked through {source}" if policies is not None and source else "policies not asked"
        detail = f"no known break for RabbitMQ {server_v or '?'}, celery {celery_v}, kombu {kombu_v} ({asked})"
        return Check("compat", OK, seconds, detail, data=data)
    status = FAIL if any(p.status == FAIL for p in problems) else WARN
    hints = list(dict.fromkeys(p.hint for p in problems))
    return Check("compat", status, seconds, "; ".join(p.message for p in problems), "; ".join(hints), data)


def ha_policy_names(policies: list[dict[str, Any]]) -> list[str]:
    """Names of the policies that mirror classic queues (``ha-mode`` in their definition)."""
    out = []
    for policy in policies:
        definition = policy.get("definition")
        if isinstance(definition, str):  # rabbitmqctl list_policies gives it as JSON text
            import json

            try:
                definition = json.loads(definition)
            except ValueError:
                definition = {}
        if isinstance(definition, dict) and "ha-mode" in definition:
            out.append(str(policy.get("name")))
    return sorted(out)
