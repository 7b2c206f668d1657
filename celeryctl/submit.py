"""Enqueue one task with publisher confirms, and wait for its result.

"Submitted" means the broker confirmed the message (publisher confirms), never merely that it
was written to a socket.  Waiting reports every state change through a callback of
:class:`Event` objects (plus a periodic tick), so that a display can be drawn without this module
knowing anything about it.  Many copies of a task (``--count``) are :mod:`celeryctl.bulk`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celeryctl.broker import START_HINT, ensure_reachable, mask_url, queue_depths
from celeryctl.errors import (
    AccessRefusedError,
    CeleryctlError,
    InterruptedError_,
    TaskFailedError,
    TimeoutError_,
    UnreachableError,
    UsageError,
)

if TYPE_CHECKING:
    from celery import Celery

    from celeryctl.settings import Settings

READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
CONNECT_TIMEOUT = 2.0


# --------------------------------------------------------------------------- arguments


def parse_value(text: str) -> Any:
    """A JSON literal when ``text`` parses as one (``1``, ``true``, ``[1,2]``), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_args(raw: list[str] | None) -> list[Any]:
    return [parse_value(a) for a in raw or []]


def parse_kwargs(pairs: list[str] | None, kwargs_json: str | None) -> dict[str, Any]:
    """Merge ``--kwargs JSON`` and ``-k KEY=VALUE`` (the latter win)."""
    kwargs: dict[str, Any] = {}
    if kwargs_json:
        try:
            loaded = json.loads(kwargs_json)
        except ValueError as exc:
            raise UsageError(
                f"--kwargs is not valid JSON: {exc}", "write a JSON object, e.g. --kwargs '{\"x\": 1}'"
            ) from None
        if not isinstance(loaded, dict):
            raise UsageError(
                f"--kwargs must be a JSON object, got {type(loaded).__name__}", "e.g. --kwargs '{\"x\": 1}'"
            )
        kwargs.update(loaded)
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UsageError(f"-k expects KEY=VALUE, got '{pair}'", "e.g. -k seconds=2 -k name=alice")
        kwargs[key.strip()] = parse_value(value)
    return kwargs


def parse_eta(text: str) -> datetime:
    """An ISO 8601 time; without a zone it is taken as UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--eta '{text}' is not an ISO 8601 time", "e.g. --eta 2030-01-01T12:00:00+00:00") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def check_priority(priority: int | None) -> None:
    if priority is not None and not 0 <= priority <= 9:
        raise UsageError(f"--priority must be between 0 and 9, got {priority}")


# --------------------------------------------------------------------------- the client


def prepare_client(app: Celery) -> None:
    """Publisher confirms on, no publish retries, short connect timeout (fail fast, fail clearly)."""
    conf = app.conf
    options = dict(conf.broker_transport_options or {})
    options["confirm_publish"] = True
    conf.broker_transport_options = options
    conf.broker_connection_timeout = CONNECT_TIMEOUT
    conf.broker_connection_retry = False
    conf.broker_connection_max_retries = 0
    conf.task_publish_retry = False
    from celeryctl.bulk_wait import replicate_replies

    replicate_replies(app)



def check_broker(app: Celery) -> None:
    """Fast network check (raw AMQP handshake) so that a broker that is down fails in milliseconds."""
    ensure_reachable(
        str(app.conf.broker_url),
        timeout=CONNECT_TIMEOUT,
        login=False,
        suffix="; nothing was submitted",
        hint=START_HINT,
    )


def open_client(
    settings: Settings,
    task: str,
    *,
    wait: bool = False,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    queue: str | None = None,
    priority: int | None = None,
) -> tuple[Celery, str]:
    """Load and configure the app for submitting, resolve the task name, check the broker.

    Returns ``(app, full task name)``.  Everything that can be refused is refused here, before
    anything is published: a queue that exists with another type than the settings' is exit 3.
    """
    from celeryctl import topology
    from celeryctl.celeryapp import load_app, require_backend, resolve_task_name

    app = load_app(settings.app, settings)
    require_backend(app)
    pol = topology.policy(settings)
    managed = topology.configure_app(app, pol, [queue] if queue else [])
    if priority is not None and (queue or str(app.conf.task_default_queue)) in managed:
        topology.check_priority(topology.policy_of(app), priority)
    prepare_client(app)
    name = resolve_task_name(app, task)
    if args is not None or kwargs is not None:
        check_arguments(app, name, args or [], kwargs or {})
    if wait:
        check_waitable(app, name)
    check_broker(app)
    topology.declare(str(app.conf.broker_url), managed, topology.policy_of(app))
    return app, name


def check_waitable(app: Celery, name: str) -> None:
    """Refuse ``--wait`` for a task whose result nobody will ever send."""
    from celery.backends.base import DisabledBackend

    if isinstance(app.backend, DisabledBackend):
        raise UsageError(
            f"app '{app.main}' has no result backend, so --wait cannot see the task finish",
            "set one: --backend rpc:// (env CELERYCTL_RESULT_BACKEND), or submit without --wait",
        )
    if app.tasks[name].ignore_result:
        raise UsageError(
            f"task {name} ignores its result (ignore_result=True), so --wait cannot see it finish",
            "submit it without --wait",
        )


def publish_error(app: Celery, exc: BaseException) -> CeleryctlError:
    """Turn a kombu/py-amqp error raised while publishing into a clear celeryctl error."""
    from celeryctl import topology

    url = mask_url(str(app.conf.broker_url))
    name = type(exc).__name__
    text = str(exc)
    mismatch = topology.parse_mismatch(text) if "PRECONDITION_FAILED" in text or name == "PreconditionFailed" else None
    if mismatch is not None:
        return topology.mismatch_error(mismatch, topology.policy_of(app))
    if name in ("AccessRefused", "NotAllowed") or "ACCESS_REFUSED" in text or "NOT_ALLOWED" in text:
        return AccessRefusedError(
            f"the broker at {url} refused access: {text}; nothing was submitted",
            "check the user, password and vhost in the broker URL",
        )
    return UnreachableError(
        f"could not submit to the broker at {url}: {name}: {text}; the task was not confirmed",
        "check that the broker runs: celeryctl broker status",
    )


def library_errors() -> tuple[type[BaseException], ...]:
    """What a broken or refused broker connection raises through kombu and py-amqp."""
    import amqp.exceptions
    import kombu.exceptions

    return (kombu.exceptions.OperationalError, amqp.exceptions.AMQPError, OSError, TimeoutError)


def check_arguments(app: Celery, name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """The arguments fit the task's signature, or a usage error naming it (exit 2).

    Celery makes the same check in ``apply_async`` but raises a bare TypeError, and the bulk path
    (``bulk.send_many``) builds messages without it, so a mistyped call would fail on the worker.
    """
    task = app.tasks[name]
    header = getattr(task, "__header__", None)
    if not getattr(task, "typing", True) or header is None:
        return
    try:
        header(*args, **kwargs)
    except TypeError as exc:
        import inspect

        try:
            sig = inspect.signature(task.run)
            bare = sig.replace(
                parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
                return_annotation=sig.empty,
            )
            signature = f"{name.rsplit('.', 1)[-1]}{bare}"
        except (TypeError, ValueError):
            signature = name
        raise UsageError(f"task {name}: {exc}", f"it is called as {signature}") from None


def send(
    app: Celery,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    countdown: float | None = None,
    eta: datetime | None = None,
    queue: str | None = None,
    priority: int | None = None,
    ids_file: Path | None = None,
) -> Any:
    """Publish one task and return its ``AsyncResult`` once the broker confirmed it.

    Its id is appended to ``ids_file`` once confirmed.  A broker lost before the confirm is exit 6
    with ``confirmed: 0`` and the id in the details (the message may or may not be queued).
    """
    from celery.utils import uuid

    check_arguments(app, name, args, kwargs)
    task_id = uuid()
    options: dict[str, Any] = {"retry": False, "task_id": task_id}
    if countdown is not None or eta is not None:
        from celeryctl import delayed

        countdown, eta = delayed.fit(app, delayed.target(app, name, queue), countdown, eta)
    for key, value in (("countdown", countdown), ("eta", eta), ("queue", queue), ("priority", priority)):
        if value is not None and value != "":
            options[key] = value
    from celeryctl.bulk import IdsFile

    sink = IdsFile(ids_file) if ids_file is not None else None
    try:
        result = app.tasks[name].apply_async(args=args, kwargs=kwargs, **options)
    except library_errors() as exc:
        error = publish_error(app, exc)
        error.details.update(requested=1, published=1, confirmed=0, unconfirmed=1, ids=[], task_id=task_id)
        raise error from exc
    if sink is not None:
        sink.write([task_id])
    return result


def consumers(app: Celery, name: str, queue: str | None = None) -> tuple[str, int | None]:
    """The queue a task goes to and how many consumers it has (None when it cannot be told).

    Waiting on a queue that no worker consumes would wait forever: the CLI warns about it.
    """
    try:
        qname = queue or app.amqp.router.route({}, name)["queue"].name
    # The app's own routing (task_routes, custom routers) may raise anything: no warning rather than an error.
    except Exception:  # noqa: BLE001
        return queue or "", None
    # Not allowed to look (exit 7 from queue_depths), or the broker went away: cannot be told.
    cannot_tell: tuple[type[BaseException], ...] = (AccessRefusedError, *library_errors())
    try:
        with app.connection_for_write() as conn:
            (depth,) = queue_depths(conn, [qname])
    except cannot_tell:
        return qname, None
    # A queue that does not exist has no consumer.
    return qname, depth.consumers if depth.exists else 0


# --------------------------------------------------------------------------- waiting


@dataclass
class Event:
    """A state change of a task (``tick`` is True for the periodic ones with no news)."""

    task_id: str
    state: str
    elapsed: float
    meta: Any = None
    tick: bool = False

    @property
    def current(self) -> float | None:
        return _num(self.meta, "current")

    @property
    def total(self) -> float | None:
        return _num(self.meta, "total")


def _num(meta: Any, key: str) -> float | None:
    if isinstance(meta, dict) and isinstance(meta.get(key), (int, float)):
        return float(meta[key])
    return None


@dataclass
class Outcome:
    task_id: str
    name: str
    state: str
    seconds: float
    result: Any = None
    exc_type: str | None = None
    exc_message: str | None = None
    traceback: str | None = None
    states: list[str] = field(default_factory=list)
    retries: int = 0

    @property
    def ok(self) -> bool:
        return self.state == "SUCCESS"

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "task_id": self.task_id,
            "task": self.name,
            "state": self.state,
            "seconds": round(self.seconds, 3),
            "states": self.states,
            "retries": self.retries,
        }
        if self.ok:
            doc["result"] = self.result
        else:
            doc["exception"] = {"type": self.exc_type, "message": self.exc_message}
        return doc


def failure_error(outcome: Outcome, *, verbose: bool = False) -> TaskFailedError:
    details: dict[str, object] = {"task_id": outcome.task_id, "task": outcome.name, "state": outcome.state}
    details["exception"] = {"type": outcome.exc_type, "message": outcome.exc_message}
    if verbose and outcome.traceback:
        details["log_tail"] = outcome.traceback.rstrip().splitlines()
    return TaskFailedError(
        f"task {outcome.name}[{outcome.task_id}] failed: {outcome.exc_type}: {outcome.exc_message}",
        None if verbose else "run with -v to see the remote traceback",
        details=details,
    )


def wait(
    app: Celery,
    result: Any,
    *,
    name: str = "",
    timeout: float | None = None,
    on_event: Callable[[Event], None] | None = None,
    tick: float = 0.1,
) -> Outcome:
    """Wait for one task, reporting each state message; raise TimeoutError_ when ``timeout`` expires."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    started = time.monotonic()
    task_id = str(result.id)
    report = on_event or (lambda _e: None)
    seen: list[str] = []
    retries = 0
    last: dict[str, Any] = {"state": "PENDING", "meta": None}
    report(Event(task_id, "PENDING", 0.0))

    def on_message(body: dict[str, Any]) -> None:
        nonlocal retries
        if body.get("task_id") not in (None, task_id):
            return
        state = str(body.get("status") or "PENDING")
        if state == "RETRY":
            retries += 1
        if not seen or seen[-1] != state:
            seen.append(state)
        last["state"], last["meta"] = state, body.get("result")
        report(Event(task_id, state, time.monotonic() - started, body.get("result")))

    def on_interval() -> None:
        report(Event(task_id, last["state"], time.monotonic() - started, last["meta"], tick=True))

    try:
        if getattr(app.backend, "is_async", False):
            result.get(
                timeout=timeout,
                propagate=False,
                interval=tick,
                on_message=on_message,
                on_interval=on_interval,
            )
        else:  # backends that store results (database, files): poll them
            _poll(result, timeout, tick, on_message, on_interval)
    except CeleryTimeout:
        raise TimeoutError_(
            f"task {name or ''}[{task_id}] did not finish within {timeout:g} s (last state {last['state']}); "
            "it may still be running",
            timeout_hint(app, task_id),
            details={"task_id": task_id, "state": last["state"], "backend": backend_scheme(app)},
        ) from None
    except KeyboardInterrupt:
        raise stopped_waiting(task_id, name, last["state"]) from None
    except library_errors() as exc:
        raise UnreachableError(
            f"lost the broker while waiting for task {task_id}: {type(exc).__name__}: {exc} "
            "(the broker had confirmed the task)",
            "the task may still run; check the broker: celeryctl broker status",
            details={"requested": 1, "published": 1, "confirmed": 1, "unconfirmed": 0, "ids": [task_id]},
        ) from exc
    state = str(result.state)
    if not seen or seen[-1] != state:
        seen.append(state)
    outcome = Outcome(task_id, name, state, time.monotonic() - started, states=seen, retries=retries)
    if state == "SUCCESS":
        outcome.result = result.result
    else:
        error = result.result
        outcome.exc_type = type(error).__name__ if isinstance(error, BaseException) else state
        outcome.exc_message = str(error) if error is not None else ""
        outcome.traceback = result.traceback
    report(Event(task_id, state, outcome.seconds, outcome.result if outcome.ok else None))
    return outcome


def stopped_waiting(task_id: str, name: str | None = None, state: str = "PENDING") -> InterruptedError_:
    """Ctrl-C while waiting for one task: what the user sees (the id stays on stdout), exit 130."""
    return InterruptedError_(
        f"stopped waiting for task {name or ''}[{task_id}] (last state {state}); "
        "it keeps running (or waits in its queue)",
        None,
        stdout=[task_id],
        details={"task_id": task_id, "task": name, "state": state},
    )


def backend_scheme(app: Celery) -> str:
    """The result backend's scheme (``rpc``, ``redis``, ``db+sqlite``), never its credentials."""
    return str(app.conf.result_backend or "").partition(":")[0]


def timeout_hint(app: Celery, task_id: str) -> str:
    """What to do after ``--timeout`` expired: wait longer, or where the result can be read later."""
    if backend_scheme(app) == "rpc":
        # rpc:// sends the result to the process that submitted the task, as one message:
        # once this process exits, nobody can read it.
        return (
            f"wait longer with --timeout; with the rpc:// backend only this process could receive the result of "
            f"{task_id}, a later one cannot: for results you can fetch later use a backend that stores them, "
            "e.g. --backend db+sqlite:///results.db or redis://localhost:6379/0 (on the worker too)"
        )
    return f"wait longer with --timeout; the backend keeps the result of {task_id} (celery -A APP result {task_id})"


def _poll(
    result: Any,
    timeout: float | None,
    tick: float,
    on_message: Callable[[dict[str, Any]], None],
    on_interval: Callable[[], None],
) -> None:
    from celery.exceptions import TimeoutError as CeleryTimeout

    deadline = None if timeout is None else time.monotonic() + timeout
    previous: tuple[str, str] | None = None
    while True:
        state, meta = str(result.state), result.info
        if (state, repr(meta)) != previous:
            previous = (state, repr(meta))
            on_message({"task_id": result.id, "status": state, "result": meta})
        if state in READY_STATES:
            return
        if deadline is not None and time.monotonic() > deadline:
            raise CeleryTimeout("timed out")
        on_interval()
        time.sleep(tick)
