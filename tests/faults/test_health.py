"""The worker's health record and ``celeryctl probe``, against a real worker and a real broker
that this module stops, starts again, and whose worker it freezes and kills.

One worker (``-c 1 --beat --health-port``) lives through the module; the tests run in the order
of its life: ready, busy, broker gone and back, frozen, killed.
"""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeryctl.rabbitmq.node import pick_free_port
from tests.conftest import CELERYCTL_WORKER, CliRun, Worker, Workers, wait_for
from tests.faults.conftest import ROOT, FaultNode

APP = "tests.faults.healthapp"
NAME = f"health-{socket.gethostname()}"  # the node is NAME@host: probes name it "health-HOST"


@pytest.fixture(scope="module")
def health_port() -> int:
    return pick_free_port([], set())


@pytest.fixture(scope="module")
def worker(
    fault_node: FaultNode, module_workers: Workers, tmp_path_factory: pytest.TempPathFactory, health_port: int
) -> Iterator[Worker]:
    cwd = tmp_path_factory.mktemp("health-worker")  # beat's schedule file lands here
    w = module_workers.start(
        CELERYCTL_WORKER,
        fault_node.url,
        "-A", APP, "-c", "1", "--beat", "--health-port", str(health_port),
        "--", "--schedule", str(cwd / "beat-schedule"),
        name=f"{NAME}@{socket.gethostname()}",
        env={"CELERYCTL_BROKER_URL": fault_node.url, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
    )
    yield w
    w.stop()


def data_env(worker: Worker) -> dict[str, str]:
    return {"CELERYCTL_DATA_DIR": worker.env["CELERYCTL_DATA_DIR"]}


def probe(cli: CliRun, worker: Worker, *args: str) -> tuple[int, str]:
    r = cli("probe", "worker", NAME, *args, env=data_env(worker))
    assert "Traceback" not in r.output
    return r.returncode, r.stdout.strip()


def get(port: int, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_ready_within_seconds_of_start_with_the_record_under_the_data_dir(cli: CliRun, worker: Worker) -> None:
    code, line = wait_for(lambda: (r := probe(cli, worker, "--ready"))[0] == 0 and r, timeout=15, what="ready")  # type: ignore[misc]
    assert line.startswith(f"ready: {worker.name} ready, consuming celery, 0 active")
    record = Path(worker.env["CELERYCTL_DATA_DIR"]) / "health" / f"{worker.name}.json"
    doc = json.loads(record.read_text())
    assert doc["node"] == worker.name and doc["pid"] == worker.proc.pid  # type: ignore[union-attr]
    assert (doc["state"], doc["connected"], doc["consuming"], doc["queues"]) == ("ready", True, True, ["celery"])
    # the probe with no name finds the only record; --json is one document
    r = cli("probe", "worker", "--ready", "--json", env=data_env(worker))
    assert r.returncode == 0 and r.json()["node"] == worker.name and r.json()["state"] == "ready"


def test_beat_reports_the_schedule_it_sent(cli: CliRun, worker: Worker) -> None:
    code, line = wait_for(  # type: ignore[misc]
        lambda: (r := probe(cli, worker, "--beat"))[0] == 0 and r, timeout=20, what="beat to send a task"
    )
    assert "beat sent every-second" in line


def test_busy_with_a_10_s_task_on_c_1_it_stays_alive_and_ready(
    cli: CliRun, worker: Worker, health_port: int, fault_node: FaultNode
) -> None:
    sub = cli("submit", "-A", APP, "healthapp.sleep", "10", env={"CELERYCTL_BROKER_URL": fault_node.url}, cwd=ROOT)
    assert sub.returncode == 0, sub.output
    wait_for(lambda: "1 active" in probe(cli, worker, "--ready")[1], timeout=15, what="the task to start")
    started = time.monotonic()
    answers = []
    while time.monotonic() - started < 8:  # through most of the task: every answer is "ready"
        answers.append(probe(cli, worker, "--ready"))
        time.sleep(0.5)
    assert all(code == 0 and "ready, consuming celery, 1 active" in line for code, line in answers), answers
    # the same over HTTP, from the worker's own thread
    status, doc = get(health_port, "/readyz")
    assert status == 200 and doc["ok"] is True and doc["record"]["active"] == 1
    assert get(health_port, "/livez")[0] == 200
    assert get(health_port, "/nope")[0] == 404


def test_broker_down_is_not_ready_but_alive_and_ready_again_when_it_returns(
    cli: CliRun, worker: Worker, health_port: int, fault_node: FaultNode
) -> None:
    pid = worker.proc.pid  # type: ignore[union-attr]
    fault_node.stop()
    try:
        wait_for(lambda: probe(cli, worker, "--ready")[0] == 1, timeout=20, what="not ready")
        down = time.time()
        code, line = probe(cli, worker, "--ready")
        assert line.startswith(f"not ready: {worker.name} reconnecting: not connected to the broker"), line
        assert probe(cli, worker)[0] == 0  # alive: an orchestrator must not restart it for the broker
        assert get(health_port, "/readyz")[0] == 503 and get(health_port, "/livez")[0] == 200
        broker = cli("probe", "broker", env={"CELERYCTL_BROKER_URL": fault_node.url})
        assert broker.returncode == 6 and "cannot reach the broker" in broker.stderr
    finally:
        fault_node.start()
    # the first record that says ready again: its heartbeat starts with the consumer, not at the
    # loop's last turn before the outage (which would read as a frozen loop)
    record = Path(worker.env["CELERYCTL_DATA_DIR"]) / "health" / f"{worker.name}.json"
    first = wait_for(lambda: (d := json.loads(record.read_text()))["state"] == "ready" and d, timeout=40, interval=0.01)
    assert first["heartbeat"] > down, first  # type: ignore[index]
    wait_for(lambda: probe(cli, worker, "--ready")[0] == 0, timeout=10, what="ready again")
    assert worker.proc.poll() is None and worker.proc.pid == pid  # type: ignore[union-attr]  # no restart
    assert get(health_port, "/readyz")[0] == 200


def test_probe_broker_up_and_bad_password(cli: CliRun, fault_node: FaultNode) -> None:
    up = cli("probe", "broker", env={"CELERYCTL_BROKER_URL": fault_node.url})
    assert up.returncode == 0 and up.stdout.startswith("broker up: amqp://guest:****@127.0.0.1:"), up.output
    bad = fault_node.url.replace("guest:guest@", "guest:wrong-secret@")
    refused = cli("probe", "broker", "--json", env={"CELERYCTL_BROKER_URL": bad})
    assert refused.returncode == 7 and refused.json()["error"]["code"] == "access_refused"
    assert "wrong-secret" not in refused.output


def test_sigstop_fails_liveness_within_max_age_and_sigcont_heals(cli: CliRun, worker: Worker) -> None:
    assert probe(cli, worker, "--max-age", "2")[0] == 0
    pid = worker.proc.pid  # type: ignore[union-attr]
    worker.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    try:
        # within --max-age of the last heartbeat (at most one interval old when frozen), give or
        # take a probe's own start-up
        wait_for(lambda: probe(cli, worker, "--max-age", "2")[0] == 1, timeout=2 + 1 + 1, what="liveness to fail")
        code, line = probe(cli, worker, "--max-age", "2")
        assert "but the last heartbeat was" in line and "(--max-age 2 s)" in line, line
    finally:
        worker.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    wait_for(lambda: probe(cli, worker, "--max-age", "2")[0] == 0, timeout=10, what="alive again")
    assert worker.proc.pid == pid  # type: ignore[union-attr]


def test_sigkill_fails_liveness_at_once(cli: CliRun, worker: Worker) -> None:
    assert probe(cli, worker)[0] == 0
    worker.stop(signal.SIGKILL)
    code, line = probe(cli, worker)
    assert code == 1 and f"process {worker.proc.pid} is gone" in line, line  # type: ignore[union-attr]
