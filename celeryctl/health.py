"""A worker's health record, and the probes that read it.

``celeryctl worker`` writes a small JSON record about once a second, from inside the worker
(:class:`Recorder`, fed by a consumer bootstep in :mod:`celeryctl.worker_steps`), atomically
(a temporary file renamed over the record).  ``celeryctl probe worker`` reads it: no broker round
trip and no Celery, kombu or pika import, so an orchestrator can probe every few seconds for
nothing (``celery inspect ping`` loads the app, goes through the broker and, with ``-c 1`` and a
long task, answers "no nodes replied").

The record's ``heartbeat`` is the last time the worker's event loop ran.  While the worker connects
(``starting``), reconnects after losing the broker (``reconnecting``) or stops (``shutting down``)
its event loop is not meant to run, and the heartbeat is the recorder thread's own: the process is
alive.  A frozen event loop (SIGSTOP, a deadlock) or a dead process (SIGKILL) leaves the heartbeat
to age, and liveness fails once it is older than ``--max-age``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The record's format; a probe refuses a record from a newer celeryctl.
RECORD_VERSION = 1
#: Seconds between two writes of the record (and two ticks of the event loop's timer).
INTERVAL = 1.0
#: A heartbeat older than this fails liveness (``probe worker --max-age``): ten missed writes.
DEFAULT_MAX_AGE = 10.0
#: The worker's states, in the order of a life.
STATES = ("starting", "ready", "reconnecting", "shutting down", "stopped")
HEALTH_DIR = "health"
BEAT_SUFFIX = ".beat"


def health_dir(data_dir: Path) -> Path:
    return Path(data_dir) / HEALTH_DIR


def record_path(data_dir: Path, node: str) -> Path:
    """The default record of worker ``node``: ``<data dir>/health/<node>.json``."""
    return health_dir(data_dir) / f"{node_name(node)}.json"


def node_name(name: str, host: str | None = None) -> str:
    """A full node name: ``w1`` is ``w1@<this host>``, as Celery names a worker started ``-n w1``."""
    return name if "@" in name else f"{name}@{host or socket.gethostname()}"


# --------------------------------------------------------------------------- the probes


@dataclass
class Verdict:
    """The answer of a probe: ``ok`` (exit 0) or not (exit 1), and why in one line."""

    ok: bool
    check: str  # alive | ready | beat
    reason: str
    code: str = "ok"  # ok | no_record | unreadable | stale | process_gone | stopped | not_ready | no_beat | beat_stale
    path: str | None = None
    node: str | None = None
    state: str | None = None
    age: float | None = None  # seconds since the heartbeat
    record: dict[str, Any] | None = None

    def line(self) -> str:
        head = f"{self.check}: " if self.ok else f"not {self.check}: "
        return head + (f"{self.node} " if self.node else "") + self.reason

    def hint(self) -> str | None:
        return HINTS.get(self.code)

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "ok": self.ok,
            "check": self.check,
            "node": self.node,
            "state": self.state,
            "age": None if self.age is None else round(self.age, 3),
            "path": self.path,
            "line": self.line(),
            "record": self.record,
        }
        if not self.ok:
            doc["error"] = {"code": self.code, "message": self.line(), "hint": self.hint(), "exit_code": 1}
        return doc


HINTS = {
    "no_record": "start one: celeryctl worker (or name the worker: celeryctl probe worker NAME, or --file PATH)",
    "unreadable": "the file is not a celeryctl health record; check --file",
    "stale": "the worker's event loop is stuck or the process is frozen; restart it",
    "process_gone": "the worker died; restart it (its unacknowledged tasks were re-queued)",
    "stopped": "start it again: celeryctl worker",
    "not_ready": "the worker runs but takes no tasks; see its log and: celeryctl probe broker",
    "no_beat": "start the worker with --beat to run the scheduler in it",
    "beat_stale": "the beat scheduler is stuck; restart the worker",
}


def probe_worker(
    path: Path,
    *,
    max_age: float = DEFAULT_MAX_AGE,
    ready: bool = False,
    beat: bool = False,
    now: float | None = None,
) -> Verdict:
    """Read the record at ``path`` and judge it (see :func:`evaluate`)."""
    check = "beat" if beat else "ready" if ready else "alive"
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return Verdict(False, check, f"no health record at {path}: no worker with this name runs here", "no_record", str(path))
    except OSError as exc:
        return Verdict(False, check, f"cannot read {path}: {exc.strerror or exc}", "unreadable", str(path))
    try:
        record = json.loads(raw)
        if not isinstance(record, dict) or not isinstance(record.get("heartbeat"), (int, float)):
            raise ValueError("no heartbeat")
    except ValueError:
        return Verdict(False, check, f"{path} is not a health record", "unreadable", str(path))
    verdict = evaluate(record, now=time.time() if now is None else now, max_age=max_age, ready=ready, beat=beat)
    verdict.path = str(path)
    return verdict


def evaluate(
    record: dict[str, Any], *, now: float, max_age: float = DEFAULT_MAX_AGE, ready: bool = False, beat: bool = False
) -> Verdict:
    """Liveness: the heartbeat is at most ``max_age`` old and the process runs; ``ready``: also
    connected and consuming; ``beat``: also the beat scheduler ticked when it said it would."""
    check = "beat" if beat else "ready" if ready else "alive"
    node, state = str(record.get("node") or "?"), str(record.get("state") or "?")
    age = max(0.0, now - float(record["heartbeat"]))

    def verdict(ok: bool, reason: str, code: str = "ok") -> Verdict:
        return Verdict(ok, check, reason, code, node=node, state=state, age=age, record=record)

    if state == "stopped":
        return verdict(False, f"stopped {_ago(age)}", "stopped")
    if _process_gone(record):
        return verdict(False, f"process {record.get('pid')} is gone (last heartbeat {_ago(age)})", "process_gone")
    if age > max_age:
        return verdict(False, f"{state}, but the last heartbeat was {_ago(age)} (--max-age {max_age:g} s)", "stale")
    if ready or beat:
        if not (state == "ready" and record.get("connected") and record.get("consuming")):
            why = "not connected to the broker" if not record.get("connected") else "consuming no queue"
            return verdict(False, f"{state}: {why}", "not_ready")
    if beat:
        problem = _beat_problem(record.get("beat"), now, max_age)
        if problem is not None:
            return verdict(False, problem[1], problem[0])
    return verdict(True, summary(record, now))


def summary(record: dict[str, Any], now: float) -> str:
    """``ready, consuming celery, 1 active, 40 processed, heartbeat 0.4 s ago``."""
    parts = [str(record.get("state"))]
    queues = record.get("queues") or []
    if record.get("consuming"):
        parts.append("consuming " + ",".join(str(q) for q in queues))
    elif record.get("state") == "ready":
        parts.append("consuming nothing")
    parts.append(f"{record.get('active', 0)} active, {record.get('processed', 0)} processed")
    parts.append(f"heartbeat {_ago(now - float(record['heartbeat']))}")
    beat = record.get("beat")
    if isinstance(beat, dict) and beat.get("last_sent"):
        parts.append(f"beat sent {beat.get('entry') or 'a task'} {_ago(now - float(beat['last_sent']))}")
    return ", ".join(parts)


def _beat_problem(beat: Any, now: float, max_age: float) -> tuple[str, str] | None:
    if not isinstance(beat, dict):
        return "no_beat", "runs no beat scheduler"
    tick = beat.get("tick")
    if not isinstance(tick, (int, float)):
        return ("beat_stale", "beat has not run its schedule yet") if now - float(beat.get("since") or now) > max_age else None
    # Beat sleeps until its next entry is due (up to beat_max_loop_interval): that long plus
    # --max-age is still alive.
    allowed = float(beat.get("next_in") or 0.0) + max_age
    if now - tick > allowed:
        return "beat_stale", f"beat last ran its schedule {_ago(now - tick)} (allowed {allowed:g} s)"
    return None


def _process_gone(record: dict[str, Any]) -> bool:
    """The record's process no longer runs (only decidable on the worker's own host)."""
    pid = record.get("pid")
    if not isinstance(pid, int) or record.get("hostname") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: it exists
        return False
    try:  # a killed child not yet reaped by its parent is a zombie: gone all the same
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2 :].startswith("Z")
    except (OSError, ValueError):
        return False


def _ago(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s ago"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def probe(
    *,
    file: Path | None,
    data_dir: Path | None,
    name: str | None = None,
    max_age: float = DEFAULT_MAX_AGE,
    ready: bool = False,
    beat: bool = False,
) -> Verdict:
    """``celeryctl probe worker``: the record at ``file``, else worker ``name``'s under ``data_dir``,
    else the only worker's there."""
    path = file
    if path is None:
        assert data_dir is not None, "the data directory is resolved when no --file is given"
        path = find_record(data_dir, name)
        if path is None:
            check = "beat" if beat else "ready" if ready else "alive"
            where = health_dir(data_dir)
            return Verdict(False, check, f"no worker keeps a health record in {where}", "no_record", str(where))
    return probe_worker(path, max_age=max_age, ready=ready, beat=beat)


def find_record(data_dir: Path, name: str | None) -> Path | None:
    """The record a probe reads: the named worker's, else the only one in the health directory
    (None when there is none).

    Raises :class:`~celeryctl.errors.UsageError` when several workers keep records there.
    """
    if name:
        return record_path(data_dir, name)
    folder = health_dir(data_dir)
    try:
        found = sorted(p for p in folder.iterdir() if p.suffix == ".json" and not p.name.startswith("."))
    except OSError:
        found = []
    if len(found) <= 1:
        return found[0] if found else None
    live = [p for p in found if not _stopped(p)]
    if len(live) == 1:
        return live[0]
    if not live:  # every worker stopped: the last one to stop says so
        return max(found, key=_mtime)
    from celeryctl.errors import UsageError

    raise UsageError(
        f"{len(live)} workers keep health records in {folder}: {', '.join(p.stem for p in live)}",
        "name one: celeryctl probe worker NAME (or --file PATH)",
    )


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _stopped(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_bytes()).get("state") == "stopped")
    except (OSError, ValueError, AttributeError):
        return True


# --------------------------------------------------------------------------- the worker's side


@dataclass
class Recorder:
    """The record of one worker, written every :data:`INTERVAL` by a thread of its own.

    The event loop calls :meth:`update` (state, connection, queues, counts) and :meth:`tick`
    (it ran); the thread writes what it has.  Only the thread writes the file.
    """

    path: Path
    node: str
    beat: bool = False
    interval: float = INTERVAL
    fields: dict[str, Any] = field(default_factory=dict)
    on_error: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.started = time.time()
        self.last_tick = self.started
        self.loop_driven = False  # True while the event loop ticks (state ready with a hub)
        self.fields = {
            "state": "starting",
            "connected": False,
            "consuming": False,
            "queues": [],
            "active": 0,
            "processed": 0,
            **self.fields,
        }
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    # -- fed by the worker

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.fields.update(fields)
        self._wake.set()

    def tick(self, **fields: Any) -> None:
        """The event loop ran (and saw ``fields``): written at once, so that a record on disk is
        never more than one interval older than the loop's last turn."""
        with self._lock:
            self.last_tick = time.time()
            self.fields.update(fields)
        self._wake.set()

    # -- read by the thread and the HTTP endpoints

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            fields = dict(self.fields)
            heartbeat = self.last_tick if (self.loop_driven and fields["state"] == "ready") else now
        record: dict[str, Any] = {
            "version": RECORD_VERSION,
            "node": self.node,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            **fields,
            "heartbeat": round(heartbeat, 3),
            "written": round(now, 3),
            "started": round(self.started, 3),
            "interval": self.interval,
        }
        if self.beat:
            record["beat"] = self._beat(now)
        return record

    def _beat(self, now: float) -> dict[str, Any]:
        try:
            found = json.loads(self.path.with_name(self.path.name + BEAT_SUFFIX).read_bytes())
            if isinstance(found, dict):
                return {"since": self.started, **found}
        except (OSError, ValueError):  # beat has not written yet, or is writing
            pass
        return {"since": self.started, "tick": None, "next_in": None, "last_sent": None, "entry": None}

    def write(self) -> None:
        from celeryctl.errors import CeleryctlError
        from celeryctl.files import write_file

        try:
            write_file(self.path, json.dumps(self.snapshot()), mode=0o644, sync=False)
            self._failed = False
        except CeleryctlError as exc:  # a full disk, a removed directory: said once, retried
            if not self._failed and self.on_error is not None:
                self.on_error(exc.message)
            self._failed = True

    # -- the thread

    def start(self) -> None:
        if self._thread is not None:
            return
        self.write()
        self._thread = threading.Thread(target=self._run, name="celeryctl-health", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if not self._done.is_set():
                self.write()

    def stop(self) -> None:
        """The last record: ``stopped``."""
        self._done.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.update(state="stopped", connected=False, consuming=False)
        self.write()


class BeatReporter:
    """Written by the beat scheduler's process (``worker --beat``): when it last ran its schedule,
    when it will run it next, and when it last sent a task.  The worker's :class:`Recorder` folds
    it into the record (beat runs in a child process of the worker)."""

    def __init__(self, record: Path) -> None:
        self.path = Path(record).with_name(Path(record).name + BEAT_SUFFIX)
        self.doc: dict[str, Any] = {"pid": os.getpid(), "tick": None, "next_in": None, "last_sent": None, "entry": None}

    def ticked(self, next_in: float) -> None:
        self.doc.update(tick=round(time.time(), 3), next_in=round(float(next_in), 3))
        self._write()

    def sent(self, entry: str) -> None:
        self.doc.update(last_sent=round(time.time(), 3), entry=entry)

    def _write(self) -> None:
        from celeryctl.errors import CeleryctlError
        from celeryctl.files import write_file

        try:
            write_file(self.path, json.dumps(self.doc), mode=0o644, sync=False)
        except CeleryctlError:  # the worker's record then says beat stopped ticking, which is the truth
            pass


class HealthServer:
    """``GET /livez`` and ``GET /readyz`` on 127.0.0.1: 200 or 503 with the verdict as JSON.

    Served by a thread of the worker's main process from the recorder's own state, so a frozen
    event loop shows as a stale heartbeat (503) and a frozen process does not answer at all.
    """

    def __init__(self, recorder: Recorder, port: int, *, host: str = "127.0.0.1", max_age: float = DEFAULT_MAX_AGE):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server calls it by this name
                path = self.path.split("?", 1)[0].rstrip("/")
                if path not in ("/livez", "/readyz"):
                    self._send(404, {"ok": False, "error": {"code": "not_found", "message": "try /livez or /readyz"}})
                    return
                verdict = evaluate(
                    owner.recorder.snapshot(), now=time.time(), max_age=owner.max_age, ready=path == "/readyz"
                )
                self._send(200 if verdict.ok else 503, verdict.to_dict())

            def _send(self, status: int, doc: dict[str, Any]) -> None:
                body = (json.dumps(doc) + "\n").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # a probe every few seconds is not news
                pass

        self.recorder = recorder
        self.max_age = max_age
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.serve_forever, name="celeryctl-health-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(2.0)
        self.server.server_close()
