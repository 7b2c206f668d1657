"""Loading the Celery app: the user's (``-A MODULE[:ATTRIBUTE]``) or the built-in demo app.

A user's app keeps its own configuration: celeryctl's settings fill in only what the app
leaves unset, and explicit flags override both.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

from celeryctl.errors import AppError, ConfigError, NotInstalledError
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
    except SystemExit as exc:  # sys.exit() in the module: an import that gave up, not our exit
        raise AppError(
            f"app module '{module_name}' called sys.exit({exc.code!r}) while it was imported",
            "an app module must not exit at import; move that code under if __name__ == '__main__':",
            details={"module": module_name, "exit_code": exc.code if isinstance(exc.code, int) else str(exc.code)},
        ) from None
    except Exception as exc:  # any import failure is the user's app failing (re-raised as AppError)
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
    apply_client_defaults(app)
    return app


# --------------------------------------------------------------------------- failover and RabbitMQ 4.x

#: How a client moves to another member of a cluster by itself, given a ``;`` URL list: kombu
#: tries the hosts in turn with no pause within one round of the list (a dead member costs one
#: refused connect), and only between rounds (every host down) waits ``interval_start``, growing
#: by ``interval_step`` up to ``interval_max`` seconds (kombu's own 2, 2 and 30 made a worker wait
#: up to 30 s after a node came back).  The heartbeat finds a silent connection (a host lost,
#: not a process killed: then the socket closes at once) dead after 2 x 10 s instead of 2 x 120.
FAILOVER_DEFAULTS: dict[str, object] = {
    "broker_failover_strategy": "round-robin",
    "broker_heartbeat": 10,
    "broker_connection_retry": True,
}
FAILOVER_TRANSPORT_OPTIONS: dict[str, float] = {"interval_start": 0, "interval_step": 0.5, "interval_max": 2}

#: Settings under which Celery's own queues also work on RabbitMQ 4.x (4.3 refuses transient
#: non-exclusive queues and global QoS by default): exclusive control (pidbox) and event queues
#: (Celery 5.6+), per-consumer QoS when the worker's queues are quorum queues (Celery 5.5+).  Each
#: is set only when the installed Celery knows it (``celery.app.defaults``).
RABBITMQ4_SETTINGS: dict[str, object] = {
    "control_queue_exclusive": True,
    "event_queue_exclusive": True,
    "worker_detect_quorum_queues": True,
}


def apply_client_defaults(app: Celery) -> dict[str, object]:
    """Apply :data:`FAILOVER_DEFAULTS`, :data:`FAILOVER_TRANSPORT_OPTIONS` and
    :data:`RABBITMQ4_SETTINGS` where the app keeps Celery's default; return what was set.

    Called for every app celeryctl loads and by ``celeryctl.configure(app)``.
    """
    from celery.app.defaults import DEFAULTS

    applied: dict[str, object] = {}
    conf = app.conf
    for key, value in {**FAILOVER_DEFAULTS, **RABBITMQ4_SETTINGS}.items():
        if key not in DEFAULTS:  # a setting this Celery does not have
            continue
        if conf.get(key) == DEFAULTS[key] and conf.get(key) != value:
            conf[key] = value
            applied[key] = value
    options = dict(conf.broker_transport_options or {})
    for key, number in FAILOVER_TRANSPORT_OPTIONS.items():
        if key not in options:
            options[key] = number
            applied[f"broker_transport_options.{key}"] = number
    conf.broker_transport_options = options
    return applied


def explicit_keys(settings: Settings) -> frozenset[str]:
    """Settings set by a flag or the environment (they override the app's own config)."""
    return frozenset(k for k, src in settings.sources.items() if src.startswith(("flag", "env")))


def import_task_modules(app: Celery) -> None:
    """Import the app's ``include``/``imports`` modules so that its tasks are registered."""
    try:
        app.loader.import_default_modules()
    except SystemExit as exc:
        raise AppError(
            f"a task module of app '{app.main}' called sys.exit({exc.code!r}) while it was imported",
            "a task module must not exit at import; move that code under if __name__ == '__main__':",
        ) from None
    except Exception as exc:  # the user's task module failing to import (re-raised as AppError)
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


# --------------------------------------------------------------------------- optional libraries

#: The pip line for a module that an optional part of Celery imports (Celery's own extras).
PIP_FOR_MODULE = {
    "redis": "pip install 'celery[redis]'",
    "sqlalchemy": "pip install 'celery[sqlalchemy]'",
    "pymongo": "pip install 'celery[mongodb]'",
    "eventlet": "pip install 'celery[eventlet]'",
    "gevent": "pip install 'celery[gevent]'",
    "greenlet": "pip install 'celery[gevent]'",
    "pylibmc": "pip install 'celery[memcache]'",
    "cassandra": "pip install 'celery[cassandra]'",
    "elasticsearch": "pip install 'celery[elasticsearch]'",
    "couchbase": "pip install 'celery[couchbase]'",
    "pycouchdb": "pip install 'celery[couchdb]'",
    "boto3": "pip install 'celery[dynamodb]'",
    "azure": "pip install 'celery[azureblockblob]'",
    "consul": "pip install 'celery[consul]'",
    "arangodb": "pip install 'celery[arangodb]'",
    "pyArango": "pip install 'celery[arangodb]'",
}


def pip_line(module: str) -> str:
    top = module.partition(".")[0]
    return PIP_FOR_MODULE.get(top, f"pip install {top}")


def require_backend(app: Celery) -> None:
    """Raise :class:`NotInstalledError` (exit 4) when the result backend's library is missing.

    Celery builds the backend lazily, so without this a missing ``redis`` or ``sqlalchemy`` is a
    ``ModuleNotFoundError`` at the first result, after a worker started or a task was sent.
    """
    from celery.exceptions import ImproperlyConfigured

    from celeryctl.broker import mask_url

    url = mask_url(str(app.conf.result_backend))
    try:
        app.backend  # noqa: B018 - building it is the check
    except ImportError as exc:
        missing = exc.name or str(exc)
        raise NotInstalledError(
            f"the result backend {url} needs the Python package '{missing}', which is not installed",
            pip_line(missing),
            details={"backend": url, "module": missing},
        ) from None
    except ImproperlyConfigured as exc:  # Celery's wording for a missing client library, or a bad URL
        text = str(exc)
        if "install" in text.lower():
            raise NotInstalledError(f"the result backend {url}: {text}", None, details={"backend": url}) from None
        raise ConfigError(f"the result backend {url} is not usable: {text}", "check --backend") from None


def require_pool(pool: str | None) -> None:
    """Raise :class:`NotInstalledError` (exit 4) when a green-thread pool's library is missing."""
    import importlib.util

    if pool in ("eventlet", "gevent") and importlib.util.find_spec(pool) is None:
        raise NotInstalledError(
            f"the {pool} pool needs the Python package '{pool}', which is not installed",
            pip_line(pool),
            details={"pool": pool, "module": pool},
        )


# --------------------------------------------------------------------------- Celery's own commands


def run_celery(app: Celery, argv: list[str]) -> int:
    """Run ``celery <argv>`` for ``app`` in this process; its exit code.

    ``Celery.start`` drops the code its command exits with (a worker that stops on an
    unrecoverable error returned None, so celeryctl exited 0): click's own return is used here.
    """
    from celery.bin.celery import celery
    from click.exceptions import Exit

    celery.params[0].default = app
    try:
        rv = celery.main(args=argv, standalone_mode=False)
    except Exit as exc:
        rv = exc.exit_code
    finally:
        celery.params[0].default = None
    return rv if isinstance(rv, int) else 0


# --------------------------------------------------------------------------- the resolved broker


def app_broker(app: Celery) -> str:
    """The broker URL the app uses (``load_app`` already put a flag/env override in it)."""
    return str(app.conf.broker_url)


def named_app(settings: Settings) -> Celery | None:
    """The ``-A`` app when one is named, else None (the built-in demo app is not loaded)."""
    if not settings.app:
        return None
    return load_app(settings.app, settings)


def resolve_broker(settings: Settings) -> str:
    """The broker URL: the ``-A`` app's own when it sets one (unless a flag/env overrides), else settings'."""
    app = named_app(settings)
    return app_broker(app) if app is not None else settings.broker
