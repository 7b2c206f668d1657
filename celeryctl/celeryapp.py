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
            raise AppError(f"{spec}: '{attribute}' is not a Celery app", "point -A at MODULE:ATTRIBUTE holding Celery(...)")
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
    explicit: frozenset[str] = frozenset(),
) -> Celery:
    """Import and configure the app named by ``spec`` (None: the demo app).

    ``explicit`` names settings that came from a flag or the environment (``broker_url``,
    ``result_backend``): those override the app's own configuration; other celeryctl settings
    only fill what the app leaves unset.
    """
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
