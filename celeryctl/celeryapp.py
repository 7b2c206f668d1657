"""Loading the Celery app: the user's (``-A MODULE[:ATTRIBUTE]``) or the built-in demo app.

A user's app keeps its own configuration: celeryctl's settings fill in only what the app
leaves unset, and explicit flags override both.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from celeryctl.errors import AppError
from celeryctl.settings import DEFAULT_BACKEND, Settings

if TYPE_CHECKING:
    from celery import Celery

DEMO_APP = "celeryctl.demo:app"


def _find_app(module: Any, attribute: str | None, spec: str) -> Celery:
    from celery import Celery

    if attribute:
        obj = getattr(module, attribute, None)
        if not isinstance(obj, Celery):
            raise AppError(
                f"{spec}: '{attribute}' is not a Celery app", "point -A at MODULE:ATTRIBUTE holding Celery(...)"
            )
        return obj
    for name in ("app", "celery"):
        obj = getattr(module, name, None)
        if isinstance(obj, Celery):
            return obj
        if obj is not None and hasattr(obj, "__path__"):  # package.celery submodule (celery -A style)
            found = getattr(obj, "app", None)
            if isinstance(found, Celery):
                return found
    # `celery -A proj` also looks in proj.celery
    try:
        sub = importlib.import_module(f"{module.__name__}.celery")
    except ImportError:
        sub = None
    if sub is not None:
        for name in ("app", "celery"):
            obj = getattr(sub, name, None)
            if isinstance(obj, Celery):
                return obj
    for obj in vars(module).values():
        if isinstance(obj, Celery):
            return obj
    raise AppError(f"no Celery app found in module '{module.__name__}'", "name it: -A MODULE:ATTRIBUTE")


def load_app(
    spec: str | None,
    settings: Settings,
    *,
    explicit: frozenset[str] | None = None,
) -> Celery:
    """Import and configure the app named by ``spec`` (None: the demo app).

    ``explicit`` names settings that came from a flag or the environment (``broker_url``,
    ``result_backend``): those override the app's own configuration; other celeryctl settings
    only fill what the app leaves unset.  None: ``explicit_keys(settings)``.
    """
    if explicit is None:
        explicit = explicit_keys(settings)
    spec = spec or DEMO_APP
    module_name, _, attribute = spec.partition(":")
    if not module_name:
        raise AppError(f"invalid app '{spec}'", "use -A MODULE or -A MODULE:ATTRIBUTE")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's app failing
        detail = f"{type(exc).__name__}: {exc}"
        raise AppError(
            f"cannot import app module '{module_name}': {detail}",
            "run from the directory that holds it, or fix the import error (CELERYCTL_DEBUG=1 shows the traceback)",
        ) from exc
    app = _find_app(module, attribute or None, spec)
    conf = app.conf
    broker = settings.broker
    app_broker = conf.broker_url
    if "broker_url" in explicit or not app_broker:
        conf.broker_url = broker
    app_backend = conf.result_backend
    if "result_backend" in explicit or not app_backend:
        conf.result_backend = settings.result_backend or DEFAULT_BACKEND
    return app


def explicit_keys(settings: Settings) -> frozenset[str]:
    """Settings set by a flag or the environment (they override the app's own config)."""
    return frozenset(k for k, src in settings.sources.items() if src.startswith(("flag", "env")))


# --------------------------------------------------------------------------- worker defaults

#: Defaults under which no task is lost and monitors see every task.  They are applied only
#: where the app leaves the setting at Celery's own default.
#:
#: Their cost, measured with a pre-filled queue on a 2-CPU machine (worker -c 2, ``add``): CPU per
#: task, worker + broker, 1.1 + 0.54 ms with all of them (drains 887-927/s) against 0.63 + 0.29 ms
#: with Celery's defaults (1,700/s).  Task events were the largest part (0.45 ms): they are kept,
#: but sent in batches (``celeryctl.worker.EVENT_FLUSH_INTERVAL``), which leaves 0.11 ms
#: (0.88 + 0.42 ms, 1,122/s).  STARTED costs 0.14 + 0.09 ms (one more reply per task) and is kept
#: for the ``--wait`` display.  Prefetch 4 instead of 1 drains 14% more short tasks, but lets a
#: process hold tasks that an idle process could run, which long tasks must not suffer: it stays
#: 1 (floods of short tasks: ``celeryctl worker -- --prefetch-multiplier 4``).  Rate limits,
#: gossip, mingle, heartbeat and ``-O`` made no difference beyond the noise.
DURABLE_DEFAULTS: dict[str, object] = {
    "task_acks_late": True,  # acknowledge after the task ran, not before
    "task_reject_on_worker_lost": True,  # a killed worker process re-queues its task
    "worker_prefetch_multiplier": 1,  # long tasks are not hoarded by one process
    "worker_send_task_events": True,  # monitors (flower, celery events) see tasks
    "task_send_sent_event": True,
    "task_track_started": True,  # STARTED is reported, so a display shows it
}


def apply_durable_defaults(app: Celery) -> dict[str, object]:
    """Set :data:`DURABLE_DEFAULTS` where the app kept Celery's default; return what was set."""
    from celery.app.defaults import DEFAULTS

    applied: dict[str, object] = {}
    conf = app.conf
    for key, value in DURABLE_DEFAULTS.items():
        if conf.get(key) == DEFAULTS.get(key) and conf.get(key) != value:
            conf[key] = value
            applied[key] = value
    return applied


def import_task_modules(app: Celery) -> None:
    """Import the app's ``include``/``imports`` modules so that its tasks are registered."""
    try:
        app.loader.import_default_modules()
    except Exception as exc:  # noqa: BLE001 - the user's task module failing to import
        raise AppError(
            f"cannot import the task modules of app '{app.main}': {type(exc).__name__}: {exc}",
            "fix the import error (CELERYCTL_DEBUG=1 shows the traceback)",
        ) from exc


def task_names(app: Celery) -> list[str]:
    """The app's own registered task names (Celery's built-in ``celery.*`` tasks left out)."""
    import_task_modules(app)
    return sorted(name for name in app.tasks if not name.startswith("celery."))


def resolve_task_name(app: Celery, name: str) -> str:
    """A full task name for ``name``: the full name, or a unique suffix after the last dot."""
    import difflib

    names = task_names(app)
    if name in names or name in app.tasks:
        return name
    matches = [n for n in names if n.rsplit(".", 1)[-1] == name or n.endswith("." + name)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise AppError(
            f"task name '{name}' is ambiguous: {', '.join(matches)}",
            "give the full task name",
            details={"matches": matches},
        )
    short = {n.rsplit(".", 1)[-1]: n for n in names}
    close = difflib.get_close_matches(name, list(short) + names, n=5, cutoff=0.5)
    suggestions = list(dict.fromkeys(short.get(c, c) for c in close))
    listing = ", ".join(suggestions) if suggestions else ", ".join(names[:10]) or "(none)"
    label = "closest" if suggestions else "registered"
    raise AppError(
        f"unknown task '{name}' in app '{app.main}'",
        f"{label} task names: {listing}",
        details={"suggestions": suggestions, "registered": names},
    )


# --------------------------------------------------------------------------- broker reachability


def broker_address(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url.replace("pyamqp://", "amqp://", 1))
    default_port = 5671 if parts.scheme == "amqps" else 5672
    return parts.hostname or "localhost", parts.port or default_port


def ensure_broker(url: str, *, wait: float = 0.0, timeout: float = 2.0, login: bool = True) -> None:
    """Raise a clear error unless the broker at ``url`` answers (and, with ``login``, lets us in).

    ``wait`` keeps retrying the network check for that many seconds.  Kinds ``auth``/``vhost``
    become :class:`AccessRefusedError` (exit 7), the others :class:`UnreachableError` (exit 6).
    """
    import time

    from celeryctl.errors import AccessRefusedError, UnreachableError
    from celeryctl.probe import amqp_handshake, check_access
    from celeryctl.settings import mask_url

    host, port = broker_address(url)
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        shake = amqp_handshake(host, port, timeout=timeout)
        if shake.ok or time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
    if not shake.ok:
        raise UnreachableError(
            f"cannot reach the broker at {mask_url(url)}: {shake.error}",
            "start it (celeryctl broker start), check --broker / CELERYCTL_BROKER_URL, "
            "or wait for it with --wait-for-broker SECONDS",
            details={"kind": shake.kind},
        )
    if not login:
        return
    report = check_access(url, timeout=timeout, check_permissions=False)
    if report.ok:
        return
    if report.kind in ("auth", "vhost"):
        raise AccessRefusedError(
            f"the broker at {mask_url(url)} refused access: {report.error}",
            "check the user, password and vhost in the broker URL (celeryctl setup-broker creates them)",
            details={"kind": report.kind},
        )
    raise UnreachableError(f"cannot use the broker at {mask_url(url)}: {report.error}", details={"kind": report.kind})
