"""status, queues, purge, top and flower against the session's real node and real Celery workers."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    CliRun,
    RabbitNode,
    TerminalRun,
    VhostFactory,
    Worker,
    Workers,
    celery_worker,
    terminate,
    wait_for,
)

UID = uuid.uuid4().hex[:8]
MODULE = f"monapp_{UID}"
QUEUE = f"mon.work.{UID}"

APP_SOURCE = """
from celery import Celery

app = Celery({module!r}, broker={broker!r}, backend="rpc://")
app.conf.task_default_queue = {queue!r}
app.conf.broker_connection_retry_on_startup = False


@app.task
def ok(x=1):
    return x


@app.task
def boom(message="kaboom"):
    raise ValueError(message)
"""


@dataclass
class Env:
    rabbit: RabbitNode
    vhost: str
    url: str
    appdir: Path
    app: Any  # the Celery app, imported in the test process

    def cli_env(self, **extra: str) -> dict[str, str]:
        return {
            "CELERYCTL_DATA_DIR": str(self.rabbit.data_dir),
            "PYTHONPATH": os.pathsep.join([str(self.appdir), os.environ.get("PYTHONPATH", "")]),
            **extra,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def env(rabbit: RabbitNode, make_vhost: VhostFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    vhost = make_vhost("mon")
    url = vhost.url
    appdir = tmp_path_factory.mktemp("monapp")
    (appdir / f"{MODULE}.py").write_text(APP_SOURCE.format(module=MODULE, broker=url, queue=QUEUE))
    sys.path.insert(0, str(appdir))
    try:
        import importlib

        module = importlib.import_module(MODULE)
        yield Env(rabbit, vhost.name, url, appdir, module.app)
    finally:
        sys.path.remove(str(appdir))


def start_worker(workers: Workers, env: Env, name: str) -> Worker:
    """A solo-pool worker of the module's app on QUEUE, sending task events (-E)."""
    args = ("-c", "1", "-P", "solo", "--without-mingle", "--without-gossip", "-E", "-Q", QUEUE, "-l", "INFO")
    return workers.start(
        celery_worker(MODULE), env.url, *args, name=name, env={"PYTHONPATH": str(env.appdir)}, cwd=env.appdir
    )


@pytest.fixture(scope="module")
def worker(env: Env, module_workers: Workers) -> Worker:
    return start_worker(module_workers, env, f"mon{UID}@{socket.gethostname()}")


def table_rows(text: str, first_column: str) -> dict[str, dict[str, str]]:
    """The rows, by first cell, of the plain (box-less) table printed under a header starting ``first_column``."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.split()[:1] == [first_column]), None)
    assert start is not None, f"no table headed {first_column!r} in:\n{text}"
    columns = lines[start].split()
    rows = {}
    for line in lines[start + 1 :]:
        cells = line.split()
        if len(cells) != len(columns):  # the table ended
            break
        rows[cells[0]] = dict(zip(columns, cells, strict=True))
    return rows


def _run_tasks(env: Env, ok: int, boom: int) -> None:
    mod = sys.modules[MODULE]
    results = [mod.ok.delay(i) for i in range(ok)] + [mod.boom.delay(f"boom {UID} {i}") for i in range(boom)]
    for r in results:
        r.get(timeout=30, propagate=False)
        r.forget()


def _declare_and_publish(url: str, queue: str, count: int) -> None:
    import pika

    from celeryctl.broker import BrokerUrl

    conn = pika.BlockingConnection(BrokerUrl.parse(url).pika_parameters(5.0))
    try:
        ch = conn.channel()
        ch.queue_declare(queue=queue, durable=True)
        ch.confirm_delivery()
        for i in range(count):
            ch.basic_publish("", queue, f"message {i}".encode())
    finally:
        conn.close()


# --------------------------------------------------------------------------- status


def test_status_json_lists_the_worker_with_real_counts(cli: CliRun, env: Env, worker: Worker) -> None:
    before = cli("status", "--json", "-A", MODULE, env=env.cli_env())
    assert before.returncode == 0, before.output
    _run_tasks(env, ok=3, boom=1)
    r = cli("status", "--json", "-A", MODULE, env=env.cli_env())
    assert r.returncode == 0, r.output
    assert "Traceback" not in r.output
    doc = r.json()
    assert doc["ok"] is True
    assert "guest:guest" not in r.stdout  # the broker URL is masked
    workers = {w["name"]: w for w in doc["workers"]}
    assert worker.name in workers
    w, w0 = workers[worker.name], {x["name"]: x for x in before.json()["workers"]}[worker.name]
    by_task, by_task0 = w["processed_by_task"], w0["processed_by_task"]
    assert by_task.get(f"{MODULE}.ok", 0) - by_task0.get(f"{MODULE}.ok", 0) == 3
    assert by_task.get(f"{MODULE}.boom", 0) - by_task0.get(f"{MODULE}.boom", 0) == 1
    assert w["processed"] - w0["processed"] == 4
    assert w["pool"] == "solo" and w["concurrency"] == 1 and w["active"] == 0
    assert w["uptime"] is not None and QUEUE in w["queues"]
    queues = {q["name"]: q for q in doc["queues"]}
    assert doc["queue_source"] == "rabbitmqctl" and doc["vhost"] == env.vhost
    assert queues[QUEUE]["consumers"] == 1 and queues[QUEUE]["ready"] == 0
    assert doc["totals"]["workers"] == 1 and doc["totals"]["processed"] == w["processed"]
    human = cli("status", "-A", MODULE, env=env.cli_env())
    assert human.returncode == 0, human.output
    row = table_rows(human.stdout, "worker")[worker.name]
    assert (row["pool"], row["concurrency"], row["active"]) == ("solo", "1", "0")
    assert row["processed"] == str(w["processed"])  # no task ran since the --json run
    row = table_rows(human.stdout, "queue")[QUEUE]
    assert row == {"queue": QUEUE, "ready": "0", "unacked": "0", "consumers": "1", "dead": "-"}  # plain Celery: no .dead


def test_status_without_workers_and_with_unreachable_broker(cli: CliRun, env: Env, make_vhost: VhostFactory) -> None:
    r = cli("status", "--json", "--broker", make_vhost("mon-empty").url, env=env.cli_env())
    assert r.returncode == 0, r.output
    assert r.json()["workers"] == [] and r.json()["totals"]["workers"] == 0
    dead = f"amqp://guest:secret@127.0.0.1:{_free_port()}/x"
    r = cli("status", "--json", "--broker", dead, env=env.cli_env())
    assert r.returncode == 6, r.output
    assert r.json()["ok"] is False and r.json()["error"]["code"] == "unreachable"
    assert "secret" not in r.output and "Traceback" not in r.output


# --------------------------------------------------------------------------- queues and purge


def test_queue_depths_match_messages_published_with_no_consumer(cli: CliRun, env: Env) -> None:
    queue = f"mon.idle.{UID}"
    _declare_and_publish(env.url, queue, 7)
    r = cli("queues", "--json", "-A", MODULE, env=env.cli_env())
    assert r.returncode == 0, r.output
    doc = r.json()
    assert doc["source"] == "rabbitmqctl"
    q = {x["name"]: x for x in doc["queues"]}[queue]
    assert (q["ready"], q["unacked"], q["consumers"], q["messages"]) == (7, 0, 0, 7)
    # Not celeryctl's node (another data dir): the same numbers through AMQP, unacked unknown.
    remote = cli("queues", "--json", "-Q", queue, "--broker", env.url)
    assert remote.returncode == 0, remote.output
    assert remote.json()["source"] == "amqp"
    rq = {x["name"]: x for x in remote.json()["queues"]}[queue]
    assert (rq["ready"], rq["unacked"], rq["consumers"]) == (7, None, 0)
    missing = cli("queues", "--json", "-Q", f"nope.{UID}", "--broker", env.url)
    assert missing.json()["missing"] == [f"nope.{UID}"]
    human = cli("queues", "-A", MODULE, env=env.cli_env())
    assert human.returncode == 0, human.output
    assert table_rows(human.stdout, "queue")[queue] == {"queue": queue, "ready": "7", "unacked": "0", "consumers": "0"}


def test_purge_refuses_without_yes_then_removes_the_exact_count(cli: CliRun, env: Env) -> None:
    from celeryctl.broker import queue_depth

    queue = f"mon.purge.{UID}"
    _declare_and_publish(env.url, queue, 5)
    refused = cli("purge", queue, "-A", MODULE, env=env.cli_env(), input="y\n")
    assert refused.returncode == 11, refused.output
    assert "--yes" in refused.stderr and "Traceback" not in refused.output
    assert queue_depth(env.url, queue).ready == 5  # nothing was removed
    r = cli("purge", queue, "--yes", "--json", "-A", MODULE, env=env.cli_env())
    assert r.returncode == 0, r.output
    assert r.json() == {"ok": True, "queue": queue, "removed": 5, "vhost": env.vhost}
    assert queue_depth(env.url, queue).ready == 0
    _declare_and_publish(env.url, queue, 2)
    human = cli("purge", queue, "--yes", "-A", MODULE, env=env.cli_env())
    assert human.returncode == 0 and "removed 2 message(s)" in human.stdout
    gone = cli("purge", f"nope.{UID}", "--yes", "-A", MODULE, env=env.cli_env())
    assert gone.returncode == 1 and "does not exist" in gone.stderr and "Traceback" not in gone.output


def test_purge_asks_on_a_terminal(env: Env, terminal: TerminalRun) -> None:
    """A real pseudo-terminal: answering n keeps the messages (exit 11), y removes them."""
    from celeryctl.broker import queue_depth

    queue = f"mon.tty.{UID}"
    _declare_and_publish(env.url, queue, 3)

    def run(answer: str) -> tuple[int, str]:
        term = terminal("purge", queue, "-A", MODULE, env=env.cli_env())
        term.expect("[y/N]")
        term.send(answer + "\n")
        return term.wait(), term.text

    code, out = run("n")
    assert code == 11, out
    assert "3 ready message(s)" in out
    assert queue_depth(env.url, queue).ready == 3
    code, out = run("y")
    assert code == 0, out
    assert "removed 3 message(s)" in out


# --------------------------------------------------------------------------- top


def _settings(env: Env) -> Any:
    from celeryctl.settings import load_settings

    return load_settings({}, env={"CELERYCTL_DATA_DIR": str(env.rabbit.data_dir)})


def test_top_renders_the_worker_and_the_completed_and_failed_tasks(env: Env, worker: Worker) -> None:
    from rich.console import Console

    from celeryctl.render.top import frame
    from celeryctl.top import TopSession

    session = TopSession(env.app, _settings(env), refresh=0.5)
    session.start()
    try:
        assert session.wait_connected(10)
        session.first_poll.wait(10)
        _run_tasks(env, ok=4, boom=1)
        wait_for(
            lambda: (v := session.state.view()).succeeded >= 4 and v.failed >= 1,
            timeout=15,
            what="task events in top's state",
        )
        wait_for(lambda: any(q.name == QUEUE for q in session.state.view().queues), timeout=10, what="queue poll")
        view = session.state.view()
    finally:
        session.stop()
    assert (view.succeeded, view.failed, view.retried) == (4, 1, 0)
    assert sum(view.history) == 5
    console = Console(record=True, width=120, force_terminal=False, color_system=None)
    console.print(frame(view, 120))
    text = console.export_text()
    assert worker.name in text and "online" in text
    assert "succeeded 4" in text and "failed 1" in text and "retried 0" in text
    assert f"{MODULE}.boom" in text and f"ValueError('boom {UID} 0')" in text
    assert QUEUE in text and "connected" in text
    svg = console.export_svg(title="celeryctl top")
    assert "<svg" in svg


def test_top_prints_one_snapshot_when_not_a_terminal(cli: CliRun, env: Env, worker: Worker) -> None:
    r = cli("top", "--duration", "1", "-A", MODULE, env=env.cli_env())
    assert r.returncode == 0, r.output
    assert worker.name in r.stdout and "Workers 1/1 online" in r.stdout and QUEUE in r.stdout
    assert "guest:guest" not in r.stdout
    j = cli("top", "--json", "--duration", "0.5", "-A", MODULE, env=env.cli_env())
    assert j.returncode == 0, j.output
    doc = j.json()
    assert doc["connected"] is True and [w["name"] for w in doc["workers"]] == [worker.name]
    dead = cli("top", "--duration", "0.5", "--broker", f"amqp://guest:guest@127.0.0.1:{_free_port()}/x")
    assert dead.returncode == 6 and "Traceback" not in dead.output


def test_top_live_on_a_terminal_quits_on_q(env: Env, worker: Worker, terminal: TerminalRun) -> None:
    """The live dashboard on a real pseudo-terminal: it draws the worker, and q ends it with exit 0."""
    term = terminal("top", "-A", MODULE, env=env.cli_env(COLUMNS="120"))
    term.expect(worker.name, "q quits", timeout=40)
    term.send("q")
    assert term.wait() == 0, term.text[-2000:]
    assert "Traceback" not in term.text


class _Proxy:
    """A TCP forwarder to the node that can drop every connection and stop listening (a real outage)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.port = _free_port()
        self._sockets: list[socket.socket] = []
        self._server: socket.socket | None = None
        self._lock = threading.Lock()

    def up(self) -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:  # the old listener may take a moment to let go of the port
            try:
                srv.bind(("127.0.0.1", self.port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        srv.listen(16)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def down(self) -> None:
        if self._server is not None:
            # shutdown() wakes the thread blocked in accept(); a bare close() leaves the port
            # listening until accept() returns, and the next up() fails with EADDRINUSE.
            try:
                self._server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._server.close()
            self._server = None
        with self._lock:
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._sockets.clear()


def test_top_shows_a_lost_broker_connection_and_reconnects(env: Env, worker: Worker) -> None:
    from celery import Celery
    from rich.console import Console

    from celeryctl.render.top import frame
    from celeryctl.top import TopSession

    proxy = _Proxy(env.rabbit.port)
    proxy.up()
    app = Celery("mon-proxy", broker=f"amqp://guest:guest@127.0.0.1:{proxy.port}/{env.vhost}")
    app.conf.broker_connection_retry_on_startup = False
    session = TopSession(app, _settings(env), refresh=0.5)
    session.start()
    try:
        assert session.wait_connected(10)
        wait_for(lambda: any(w.name == worker.name for w in session.state.view().workers), timeout=10)
        proxy.down()
        wait_for(lambda: not session.state.view().connected, timeout=15, what="the drop to show")
        down = session.state.view()
        assert down.broker_error
        console = Console(record=True, width=120, color_system=None)
        console.print(frame(down, 120))
        assert "broker connection lost" in console.export_text()
        proxy.up()
        wait_for(lambda: session.state.view().connected, timeout=20, what="the reconnect")
        assert session.state.view().reconnects == 1
        # events flow again after the reconnect
        seen = session.state.view().events
        wait_for(lambda: session.state.view().events > seen, timeout=10, what="events after reconnect")
    finally:
        session.stop()
        proxy.down()


def test_top_marks_a_dead_worker_offline_and_back_online(env: Env, workers: Workers) -> None:
    from celeryctl.top import TopSession

    w = start_worker(workers, env, f"mondie{UID}@{socket.gethostname()}")
    session = TopSession(env.app, _settings(env), refresh=1.0)
    session.start()
    try:
        assert session.wait_connected(10)

        def state_of(name: str) -> bool | None:
            return next((x.online for x in session.state.view().workers if x.name == name), None)

        wait_for(lambda: state_of(w.name) is True, timeout=10, what="worker online")
        w.stop(signal.SIGKILL)  # dies without saying goodbye: only the heartbeats stop
        wait_for(lambda: state_of(w.name) is False, timeout=15, what="worker offline")
        w.start()
        wait_for(lambda: state_of(w.name) is True, timeout=15, what="worker back online")
    finally:
        session.stop()


def test_top_state_model_counts_and_expiry() -> None:
    """The model alone, fed the events a worker sends, on a fake clock."""
    from celeryctl.top import TopState

    now = [1000.0]
    st = TopState("amqp://x", clock=lambda: now[0])
    st.on_event({"type": "worker-online", "hostname": "w@h", "freq": 2.0})
    st.on_event({"type": "task-received", "hostname": "w@h", "uuid": "u1", "name": "t.a"})
    st.on_event({"type": "task-started", "hostname": "w@h", "uuid": "u1"})
    now[0] += 1.5
    v = st.view()
    assert [(t.name, round(rt, 1)) for t, rt in v.running] == [("t.a", 1.5)]
    st.on_event({"type": "task-retried", "hostname": "w@h", "uuid": "u1", "exception": "IOError()"})
    st.on_event({"type": "task-failed", "hostname": "w@h", "uuid": "u1", "exception": "KeyError('k')"})
    st.on_event({"type": "worker-heartbeat", "hostname": "w@h", "freq": 2.0, "active": 0, "processed": 7})
    v = st.view()
    assert (v.failed, v.retried, v.running) == (1, 1, [])
    assert v.failures[0].exception == "KeyError('k')" and v.failures[0].name == "t.a"
    assert v.workers[0].processed == 7 and v.workers[0].online
    now[0] += 6  # more than 2.5 heartbeat periods of silence
    assert st.view().workers[0].online is False
    st.on_event({"type": "worker-heartbeat", "hostname": "w@h", "freq": 2.0})
    assert st.view().workers[0].online is True
    st.on_event({"type": "worker-offline", "hostname": "w@h"})
    assert st.view().workers[0].online is False


# --------------------------------------------------------------------------- flower


def test_flower_serves_the_worker_over_http(env: Env, worker: Worker, tmp_path: Path) -> None:
    port = _free_port()
    password = f"pw-{UID}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celeryctl", "flower", "--port", str(port), "-A", MODULE],
        cwd=tmp_path,
        env={**os.environ, **env.cli_env(CELERYCTL_FLOWER_BASIC_AUTH=f"admin:{password}")},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    auth = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()

    def workers() -> dict[str, Any] | None:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/workers?refresh=1", headers={"Authorization": auth})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                doc = json.loads(resp.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None
        return doc if worker.name in doc else None

    try:
        doc = wait_for(workers, timeout=45, interval=0.5, what="Flower to list the worker")
        assert isinstance(doc, dict) and worker.name in doc
        # no credentials: refused; the password is in no argv
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/workers", timeout=5)
        assert exc.value.code == 401
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline and b"guest:guest" not in cmdline
    finally:
        text = terminate(proc)
    assert password not in text and "Traceback" not in text


def test_flower_refuses_a_public_address_without_auth(cli: CliRun, env: Env) -> None:
    r = cli("flower", "--address", "0.0.0.0", "-A", MODULE, env=env.cli_env())
    assert r.returncode == 2, r.output
    assert "without authentication" in r.stderr and "--unsafe-no-auth" in r.stderr
    assert "Traceback" not in r.output
    bad = cli("flower", "--basic-auth", "justuser", "-A", MODULE, env=env.cli_env())
    assert bad.returncode == 2 and "USER:PASSWORD" in bad.stderr


def test_flower_plan_passes_secrets_by_environment_and_the_broker_api(tmp_path: Path) -> None:
    """A node started with --management (its state file, our own pid as the live process)."""
    from celeryctl.flower import flower_plan
    from celeryctl.rabbitmq.node import NodeInfo
    from celeryctl.settings import load_settings

    node_dir = tmp_path / "data" / "node"
    node_dir.mkdir(parents=True)
    info = NodeInfo("celeryctl-1@localhost", 25672, 25673, 25674, os.getpid(), management_port=25675)
    (node_dir / "state.json").write_text(json.dumps(info.__dict__))
    settings = load_settings({}, env={"CELERYCTL_DATA_DIR": str(tmp_path / "data")})
    plan = flower_plan(
        settings, "amqp://app:s3cret@127.0.0.1:25672/prod", port=5599, basic_auth="admin:pw", address="127.0.0.1"
    )
    assert plan.env["FLOWER_BROKER_API"] == "http://app:s3cret@127.0.0.1:25675/api/"
    assert plan.env["FLOWER_BASIC_AUTH"] == "admin:pw"
    assert not any("s3cret" in a or "pw" in a for a in plan.argv)
    assert plan.broker_api == "http://app:****@127.0.0.1:25675/api/"
    other = flower_plan(settings, "amqp://app:s3cret@10.0.0.9:5672/prod", address="127.0.0.1")
    assert "FLOWER_BROKER_API" not in other.env  # not celeryctl's node: no management API to offer
    public = flower_plan(settings, "amqp://a:b@127.0.0.1:1/x", address="0.0.0.0", unsafe_no_auth=True)
    assert public.auth is False and "--address=0.0.0.0" in public.argv


def test_flower_missing_says_how_to_install_it(cli: CliRun, env: Env, tmp_path: Path) -> None:
    # A stand-in package that fails to import, first on the path: what a missing extra looks like.
    shadow = tmp_path / "shadow" / "flower"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named flower')\n")
    extra = env.cli_env()
    extra["PYTHONPATH"] = os.pathsep.join([str(shadow.parent), extra["PYTHONPATH"]])
    r = cli("flower", "-A", MODULE, env=extra)
    assert r.returncode == 4, r.output
    assert "Flower is not installed" in r.stderr and "pip install 'celeryctl[flower]'" in r.stderr
    assert "Traceback" not in r.output
