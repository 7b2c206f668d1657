"""celeryctl worker and submit against the real node, with real worker processes.

Each worker runs ``python -m celeryctl worker`` in a subprocess on a vhost of its own (so other
test modules' workers and tasks never cross), is waited for with ``app.control.ping`` and is
stopped with SIGTERM (warm shutdown) at the end.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from celeryctl.rabbitmq.node import pick_free_port
from tests.conftest import CELERYCTL_WORKER, REPO, CliRun, VhostFactory, Worker, Workers, wait_for

FIXTURES = REPO / "tests" / "fixtures"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def start_worker(
    workers: Workers, url: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Worker:
    """``celeryctl worker -c 2`` on ``url`` (more options in ``args``), ready to take tasks."""
    return workers.start(CELERYCTL_WORKER, url, "-c", "2", "-l", "INFO", *args, env=env, cwd=cwd)


def task_logged_at(worker: Worker, task_id: str, event: str) -> datetime:
    """When ``worker`` logged ``Task <name>[<task_id>] <event>``, from the line's own (local) timestamp."""
    line = re.compile(rf"^\[(\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}}): [^]]*\] Task \S+\[{task_id}\] {event}", re.M)
    found = wait_for(lambda: line.search(worker.output), timeout=10, what=f"the worker to log {task_id} {event}")
    assert isinstance(found, re.Match)
    return datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f").astimezone()


@pytest.fixture(scope="module")
def demo_url(make_vhost: VhostFactory) -> str:
    return make_vhost("celeryctl-ws").url


@pytest.fixture(scope="module")
def demo_worker(demo_url: str, module_workers: Workers) -> Worker:
    return start_worker(module_workers, demo_url, env={"CELERYCTL_BROKER_URL": demo_url})


@pytest.fixture
def env(demo_url: str) -> dict[str, str]:
    return {"CELERYCTL_BROKER_URL": demo_url}


# --------------------------------------------------------------------------- worker


def test_worker_banner_shows_masked_broker_tasks_and_durable_defaults(demo_worker: Worker) -> None:
    text = demo_worker.output
    assert "celeryctl worker" in text
    assert "guest:****@127.0.0.1" in text and "guest:guest@" not in text
    for name in ("add", "mul", "longtime_add", "sleep", "fail", "flaky"):
        assert f"celeryctl.demo.{name}" in text
    assert "task_acks_late=True" in text and "worker_prefetch_multiplier=1" in text
    assert "concurrency  2 (prefork)" in text


def test_worker_with_broker_down_fails_fast_and_clearly(cli: CliRun) -> None:
    port = pick_free_port([], set())
    r = cli("worker", "--broker", f"amqp://guest:guest@127.0.0.1:{port}//")
    assert r.returncode == 6, r.output
    assert "cannot reach the broker" in r.stderr and "Traceback" not in r.output
    r = cli("worker", "--broker", f"amqp://guest:guest@127.0.0.1:{port}//", "--wait-for-broker", "0.5")
    assert r.returncode == 6 and "--wait-for-broker" in r.stderr, r.output


def test_worker_sigterm_finishes_the_running_task(
    demo_url: str, workers: Workers, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    queue = f"warm-{uuid.uuid4().hex[:6]}"
    worker = start_worker(workers, demo_url, "-Q", queue, env={"CELERYCTL_BROKER_URL": demo_url})
    client_log = tmp_path / "client.err"
    with open(client_log, "wb") as err:
        client = subprocess.Popen(
            [sys.executable, "-m", "celeryctl", "submit", "sleep", "2", "--queue", queue, "--wait"],
            stdout=subprocess.PIPE,
            stderr=err,
            env={**isolated_env, "CELERYCTL_BROKER_URL": demo_url},
            cwd=tmp_path,
        )
    try:
        wait_for(lambda: "STARTED" in client_log.read_text(), timeout=30, what="the task to start")
        assert worker.stop(signal.SIGTERM) == 0, worker.output  # returns once the worker has exited
        out, _ = client.communicate(timeout=60)
        assert client.returncode == 0, client_log.read_text()
        assert json.loads(out) == 2.0
        assert "SUCCESS" in client_log.read_text()
    finally:
        client.kill()
        client.wait()
    assert "worker: Warm shutdown (MainProcess)" in worker.output.splitlines()


# --------------------------------------------------------------------------- submit, each demo task


def test_submit_without_wait_prints_the_confirmed_id(cli: CliRun, env: dict[str, str], demo_worker: Worker) -> None:
    r = cli("submit", "add", "1", "2", env=env)
    assert r.returncode == 0, r.output
    assert UUID.match(r.stdout.strip())


def test_submit_add_wait_prints_result_and_states(cli: CliRun, env: dict[str, str], demo_worker: Worker) -> None:
    r = cli("submit", "add", "1", "2", "--wait", env=env)
    assert r.returncode == 0, r.output
    assert r.stdout.strip() == "3"
    assert "STARTED" in r.stderr and "SUCCESS" in r.stderr


def test_submit_mul_json(cli: CliRun, env: dict[str, str], demo_worker: Worker) -> None:
    r = cli("submit", "celeryctl.demo.mul", "6", "7", "--wait", "--json", env=env)
    doc = r.json()
    assert r.returncode == 0 and doc["ok"] is True
    assert doc["result"] == 42 and doc["state"] == "SUCCESS" and doc["task"] == "celeryctl.demo.mul"
    assert UUID.match(doc["task_id"])


def test_submit_args_are_json_or_strings(cli: CliRun, env: dict[str, str], demo_worker: Worker) -> None:
    r = cli("submit", "add", "ab", "cd", "--wait", env=env)
    assert r.stdout.strip() == '"abcd"', r.output
    r = cli("submit", "add", "[1]", "[2, 3]", "--wait", env=env)
    assert json.loads(r.stdout) == [1, 2, 3], r.output
    r = cli("submit", "add", "--kwargs", '{"x": 1.5}', "-k", "y=2", "--wait", env=env)
    assert json.loads(r.stdout) == 3.5, r.output


def test_submit_longtime_add_reports_progress(cli: CliRun, env: dict[str, str], demo_worker: Worker) -> None:
    r = cli("submit", "longtime_add", "1", "2", "-k", "seconds=2", "--wait", env=env)
    assert r.returncode == 0, r.output
    assert r.stdout.strip() == "3"
    assert "PROGRESS 1/2" in r.stderr and "PROGRESS 2/2" in r.stderr


def test_submit_fail_exits_1_with_remote_exception(cli: CliRun, env: dict[str, str], demo_worker: Worker) -> None:
    r = cli("submit", "fail", "boom", "--wait", env=env)
    assert r.returncode == 1, r.output
    assert "DemoFailure: boom" in r.stderr
    assert "Traceback" not in r.output
    verbose = cli("submit", "fail", "bang", "--wait", "-v", env=env)
    assert verbose.returncode == 1
    assert "DemoFailure: bang" in verbose.stderr and "raise DemoFailure" in verbose.stderr  # the remote traceback
    js = cli("submit", "fail", "json", "--wait", "--json", env=env)
    doc = js.json()
    assert js.returncode == 1 and doc["ok"] is False and doc["error"]["code"] == "task_failed"
    assert doc["error"]["details"]["exception"] == {"type": "DemoFailure", "message": "json"}


def test_submit_flaky_shows_retries(cli: CliRun, env: dict[str, str], demo_worker: Worker) -> None:
    r = cli("submit", "flaky", "2", "-k", "backoff=0.1", "--wait", "--json", env=env)
    assert r.returncode == 0, r.output
    doc = r.json()
    assert doc["result"] == 3 and doc["retries"] == 2 and "RETRY" in doc["states"]
    r = cli("submit", "flaky", "1", "-k", "backoff=0.1", "--wait", env=env)
    assert r.returncode == 0 and r.stdout.strip() == "2", r.output
    assert "RETRY (FlakyError: planned failure 1 of 1)" in r.stderr


def test_submit_sleep_timeout_exits_8(cli: CliRun, env: dict[str, str], demo_worker: Worker) -> None:
    r = cli("submit", "sleep", "3", "--wait", "--timeout", "0.5", env=env)
    assert r.returncode == 8, r.output
    assert "may still be running" in r.stderr and "Traceback" not in r.output


def test_submit_count(cli: CliRun, env: dict[str, str], demo_worker: Worker) -> None:
    r = cli("submit", "add", "1", "2", "--count", "300", "--wait", "--json", env=env)
    assert r.returncode == 0, r.output
    doc = r.json()
    assert (doc["submitted"], doc["succeeded"], doc["failed"]) == (300, 300, 0)
    assert doc["rate"] > 0 and doc["seconds"] > 0
    ids = cli("submit", "mul", "2", "2", "--count", "20", env=env)
    assert ids.returncode == 0, ids.output
    lines = ids.stdout.split()
    assert len(lines) == 20 and len(set(lines)) == 20 and all(UUID.match(x) for x in lines)


def test_submit_count_with_failures_exits_1(cli: CliRun, env: dict[str, str], demo_worker: Worker) -> None:
    r = cli("submit", "fail", "x", "--count", "5", "--wait", "--json", env=env)
    assert r.returncode == 1, r.output
    doc = r.json()
    assert (doc["submitted"], doc["succeeded"], doc["failed"]) == (5, 0, 5) and doc["ok"] is False


def test_submit_eta_and_countdown(cli: CliRun, env: dict[str, str], demo_worker: Worker) -> None:
    eta = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    r = cli("submit", "add", "2", "3", "--eta", eta.isoformat(), "--wait", "--json", env=env)
    assert r.returncode == 0, r.output
    doc = r.json()
    assert doc["result"] == 5
    # It did not run before its ETA: the worker's own log says when it ran (ms resolution, hence the 10 ms).
    assert task_logged_at(demo_worker, doc["task_id"], "succeeded") >= eta - timedelta(milliseconds=10)
    r = cli("submit", "add", "1", "1", "--countdown", "1", "--wait", "--json", env=env)
    assert r.returncode == 0 and r.json()["result"] == 2, r.output


# --------------------------------------------------------------------------- submit errors


def test_unknown_task_lists_closest_names(cli: CliRun, env: dict[str, str]) -> None:
    r = cli("submit", "ad", "1", "2", env=env)
    assert r.returncode == 10, r.output
    assert "unknown task 'ad'" in r.stderr and "celeryctl.demo.add" in r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--kwargs", "{bad"], "--kwargs is not valid JSON"),
        (["--kwargs", "[1]"], "must be a JSON object"),
        (["-k", "novalue"], "KEY=VALUE"),
        (["--priority", "12"], "must be from 0 to 9"),
        (["--eta", "tomorrow"], "ISO 8601"),
        (["--count", "0"], "--count"),
        (["--eta", "2030-01-01T00:00:00", "--countdown", "3"], "cannot be used together"),
    ],
)
def test_bad_arguments_are_usage_errors(cli: CliRun, args: list[str], needle: str) -> None:
    r = cli("submit", "add", "1", "2", *args)
    assert r.returncode == 2, r.output
    assert needle in r.stderr and "Traceback" not in r.output


def test_app_import_error_is_one_line_exit_10(cli: CliRun, tmp_path: Path) -> None:
    work = tmp_path / "app"
    work.mkdir()
    (work / "broken_app.py").write_text("import does_not_exist_xyz\n")
    for command in (["submit", "-A", "broken_app", "add", "1", "2"], ["worker", "-A", "broken_app"]):
        r = cli(*command, cwd=work)
        assert r.returncode == 10, r.output
        assert "broken_app" in r.stderr and "does_not_exist_xyz" in r.stderr
        assert "Traceback" not in r.output
        assert r.stderr.count("error:") == 1


def test_broker_down_is_a_clear_error(cli: CliRun) -> None:
    port = pick_free_port([], set())
    r = cli("submit", "add", "1", "2", "--broker", f"amqp://guest:secret@127.0.0.1:{port}//")
    assert r.returncode == 6, r.output
    assert "nothing was submitted" in r.stderr and "Traceback" not in r.output
    assert "secret" not in r.output
    js = cli(
        "submit", "add", "1", "2", "--count", "10", "--json", "--broker", f"amqp://guest:secret@127.0.0.1:{port}//"
    )
    assert js.returncode == 6 and js.json()["error"]["code"] == "unreachable"


# --------------------------------------------------------------------------- the tutorial's project


@pytest.fixture(scope="module")
def tutorial(make_vhost: VhostFactory, module_workers: Workers) -> Worker:
    """A worker for the tutorial's test_celery app, started by celeryctl; the app keeps its broker."""
    url = make_vhost("celeryctl-tut").url
    return start_worker(
        module_workers,
        url,
        "-A",
        "test_celery",
        "--",
        "--without-gossip",
        env={"TEST_CELERY_BROKER": url},
        cwd=FIXTURES,
    )


def test_tutorial_worker_uses_the_apps_own_broker(tutorial: Worker) -> None:
    vhost = tutorial.broker_url.rsplit("/", 1)[1]
    assert vhost in tutorial.output  # the banner shows the app's own broker (from TEST_CELERY_BROKER)
    assert "test_celery.tasks.longtime_add" in tutorial.output
    assert "task_acks_late=True" in tutorial.output  # durable defaults fill what the app leaves unset


def test_tutorial_submit_through_celeryctl(cli: CliRun, tutorial: Worker) -> None:
    env = {"TEST_CELERY_BROKER": tutorial.broker_url}
    r = cli("submit", "-A", "test_celery", "longtime_add", "1", "2", "-k", "seconds=1", "--wait", env=env, cwd=FIXTURES)
    assert r.returncode == 0, r.output
    assert r.stdout.strip() == "3"


def test_tutorial_broker_flag_and_env_override_the_app(cli: CliRun, tutorial: Worker) -> None:
    # The app's own broker is the tutorial's jimmy@localhost; explicit settings win over it.
    args = ("submit", "-A", "test_celery", "test_celery.tasks.longtime_add", "2", "3", "-k", "seconds=0", "--wait")
    r = cli(*args, "--broker", tutorial.broker_url, cwd=FIXTURES)
    assert r.returncode == 0 and r.stdout.strip() == "5", r.output
    r = cli(*args, env={"CELERYCTL_BROKER_URL": tutorial.broker_url}, cwd=FIXTURES)
    assert r.returncode == 0 and r.stdout.strip() == "5", r.output
    # Without them the app keeps its own (unreachable here) broker.
    r = cli(*args, cwd=FIXTURES)
    assert r.returncode == 6, r.output  # nothing listens on localhost:5672 here: unreachable
    assert "jimmy:****@localhost" in r.stderr and "jimmy123" not in r.output


def test_tutorial_run_tasks_gets_its_result(tutorial: Worker, isolated_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "test_celery.run_tasks"],
        cwd=FIXTURES,
        env={**isolated_env, "TEST_CELERY_BROKER": tutorial.broker_url},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Task finished?  False" in proc.stdout
    assert proc.stdout.rstrip().endswith("Task result:  3")


def test_ctrl_c_while_waiting_prints_the_id_and_leaves_the_task(
    demo_url: str, demo_worker: Worker, tmp_path: Path, isolated_env: dict[str, str]
) -> None:
    err_log = tmp_path / "client.err"
    with open(err_log, "wb") as err:
        client = subprocess.Popen(
            [sys.executable, "-m", "celeryctl", "submit", "sleep", "1.5", "--wait"],
            stdout=subprocess.PIPE,
            stderr=err,
            env={**isolated_env, "CELERYCTL_BROKER_URL": demo_url},
            cwd=tmp_path,
        )
    try:
        wait_for(lambda: "STARTED" in err_log.read_text(), timeout=30, what="the task to start")
        client.send_signal(signal.SIGINT)
        out, _ = client.communicate(timeout=30)
    finally:
        client.kill()
    assert client.returncode == 130, err_log.read_text()
    task_id = out.decode().strip()
    assert UUID.match(task_id)
    assert "keeps running" in err_log.read_text() and "Traceback" not in err_log.read_text()
    wait_for(lambda: f"Task celeryctl.demo.sleep[{task_id}] succeeded" in demo_worker.output, timeout=30)


def test_worker_passes_options_after_double_dash_to_celery(cli: CliRun, env: dict[str, str]) -> None:
    r = cli("worker", "--", "--no-such-option", env=env)
    assert r.returncode == 2, r.output
    assert "No such option" in r.stderr and "Traceback" not in r.output


# --------------------------------------------------------------------------- pure helpers


def test_confirm_bookkeeping_handles_multiple_out_of_order_and_nacks() -> None:
    from celeryctl.bulk import Confirms as _Confirms

    c = _Confirms()
    c.pending.extend(range(1, 11))
    c.on_ack(3, True)
    assert c.unconfirmed == 7
    c.on_ack(5)  # out of order, single
    c.on_ack(5)  # duplicate: counted once
    assert c.unconfirmed == 6
    c.on_ack(6, True)  # covers 4 and the already-settled 5 and 6
    assert c.unconfirmed == 4 and not c.settled
    c.on_nack(8)
    assert c.nacked == 1 and c.unconfirmed == 3
    c.on_nack(10, True)
    assert c.nacked == 4 and c.unconfirmed == 0  # 7, 9 and 10 (8 was counted once)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1),
        ("1.5", 1.5),
        ("true", True),
        ("null", None),
        ("[1,2]", [1, 2]),
        ('{"a":1}', {"a": 1}),
        ("abc", "abc"),
        ('"1"', "1"),
    ],
)
def test_args_are_json_literals_else_strings(text: str, value: object) -> None:
    from celeryctl.submit import parse_value

    assert parse_value(text) == value


def test_wait_on_a_task_that_ignores_its_result_is_refused(cli: CliRun, tmp_path: Path) -> None:
    work = tmp_path / "ignoring"
    work.mkdir()
    (work / "ignoring_app.py").write_text(
        "from celery import Celery\napp = Celery('ignoring_app')\n\n@app.task(ignore_result=True)\ndef noop():\n    pass\n"
    )
    r = cli("submit", "-A", "ignoring_app", "noop", "--wait", cwd=work)
    assert r.returncode == 2, r.output
    assert "ignore_result" in r.stderr and "Traceback" not in r.output


def test_wait_polls_a_result_backend_that_stores_results(
    cli: CliRun, demo_url: str, workers: Workers, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    results.mkdir()
    backend = {"CELERYCTL_BROKER_URL": demo_url, "CELERYCTL_RESULT_BACKEND": f"file://{results}"}
    queue = f"files-{uuid.uuid4().hex[:6]}"
    start_worker(workers, demo_url, "-Q", queue, env=backend)
    r = cli("submit", "longtime_add", "1", "2", "-k", "seconds=1", "--queue", queue, "--wait", env=backend)
    assert r.returncode == 0 and r.stdout.strip() == "3", r.output
    assert "PROGRESS" in r.stderr and "SUCCESS" in r.stderr
    r = cli("submit", "add", "1", "2", "--queue", queue, "--count", "5", "--wait", "--json", env=backend)
    assert r.returncode == 0 and r.json()["succeeded"] == 5, r.output


def test_monitor_sees_every_task_event_from_the_batched_worker(
    cli: CliRun, env: dict[str, str], demo_url: str, demo_worker: Worker
) -> None:
    """Task events are sent in batches (celeryctl.worker.EVENT_FLUSH_INTERVAL): none is lost."""
    import threading
    from collections import Counter

    from celery import Celery

    app = Celery("events-probe", broker=demo_url)
    events: list[tuple[str, str]] = []
    listening = threading.Event()

    def capture() -> None:
        with app.connection() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": lambda e: events.append((e["type"], e.get("uuid")))})
            receiver.on_consume_ready = lambda *_a, **_k: listening.set()
            holder.append(receiver)
            receiver.capture(limit=None, timeout=None, wakeup=False)

    holder: list[object] = []
    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    ids: set[str] = set()

    def counts() -> Counter[str]:
        return Counter(kind for kind, uuid in list(events) if uuid in ids)

    try:
        assert listening.wait(10)
        r = cli("submit", "add", "2", "3", "--count", "60", env=env)
        assert r.returncode == 0, r.output
        ids.update(r.stdout.split())
        assert len(ids) == 60
        wanted = ("task-received", "task-started", "task-succeeded")
        wait_for(lambda: all(counts()[t] >= 60 for t in wanted), timeout=30, what="60 task events of each kind")
        assert all(counts()[t] == 60 for t in wanted), counts()
    finally:
        for receiver in holder:
            receiver.should_stop = True  # type: ignore[attr-defined]
        thread.join(5)
        app.close()


def test_submit_count_wait_timeout_exits_8(cli: CliRun, env: dict[str, str], demo_worker: Worker) -> None:
    r = cli("submit", "sleep", "1", "--count", "3", "--wait", "--timeout", "0.5", "--json", env=env)
    assert r.returncode == 8, r.output
    assert r.json()["ok"] is False and "Traceback" not in r.output
