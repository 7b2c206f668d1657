"""The worker's faults, counted on the worker's side (the ledger): kills, broker restarts, poison
tasks, garbage messages, SIGTERM with a grace, a countdown task beside a stream of short ones.

Every case runs a real ``celeryctl worker -A tests.faults.worker_app`` (the fault app plus ``mark``)
on this module's own node, submits with ``celeryctl submit ... --count N --json`` and asserts that
nothing submitted was lost (duplicates are allowed: delivery is at least once).
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CliRun, Worker, Workers, wait_for
from tests.faults.conftest import ROOT, FaultNode, Ledger

APP = "tests.faults.worker_app"
QUEUE = "celery"
DEAD = "celery.dead"


def _channel(url: str):  # type: ignore[no-untyped-def]
    import pika

    return pika.BlockingConnection(pika.URLParameters(url))


def depth(url: str, queue: str) -> int:
    """Ready messages in ``queue`` (passive declare); 0 when it does not exist."""
    import pika.exceptions

    conn = _channel(url)
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        conn.close()


def consumers(url: str, queue: str) -> int:
    """Consumers of ``queue`` (passive declare); 0 when it does not exist."""
    import pika.exceptions

    conn = _channel(url)
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.consumer_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        conn.close()


@pytest.fixture(autouse=True)
def empty_queues(fault_node: FaultNode) -> Iterator[None]:
    """Each test starts with ``celery`` and ``celery.dead`` empty.

    The previous test's workers were SIGKILLed: once RabbitMQ has dropped their consumers, what
    they held is back in the queue, and purged with the rest.
    """
    import pika.exceptions

    wait_for(lambda: consumers(fault_node.url, QUEUE) == 0, timeout=30, what="the last test's workers to be gone")
    conn = _channel(fault_node.url)
    try:
        for queue in (QUEUE, DEAD):
            ch = conn.channel()
            try:
                ch.queue_purge(queue)
                ch.close()
            except pika.exceptions.ChannelClosedByBroker:  # not declared yet
                pass
    finally:
        conn.close()
    yield


def submit(cli: CliRun, node: FaultNode, task: str, *args: str, count: int = 1) -> list[str]:
    """``celeryctl submit TASK ARGS --count N --json``: the ids the broker confirmed."""
    r = cli("submit", task, *args, "--count", str(count), "--json", "-A", APP, env=_env(node), cwd=ROOT)
    assert r.returncode == 0, r.output
    doc = r.json()
    ids = doc["ids"] if count > 1 else [doc["task_id"]]  # --count 1 is a single submit
    assert len(ids) == count
    return list(ids)


def _env(node: FaultNode, ledger: Ledger | None = None) -> dict[str, str]:
    return {"CELERYCTL_BROKER_URL": node.url, **(ledger.env if ledger else {})}


def start_worker(workers: Workers, node: FaultNode, ledger: Ledger, *args: str) -> Worker:
    return workers.start(["celeryctl", "worker"], node.url, "-A", APP, *args, env=_env(node, ledger), cwd=ROOT)


def restart(node: FaultNode) -> None:
    """Stop and start the broker; then drop this process's pooled connections to the old one.

    (kombu keeps a process-wide pool per broker URL: the next worker ping would reuse a dead one.)
    """
    from kombu import pools

    node.stop()
    node.start()
    pools.reset()


def all_done(ledger: Ledger, ids: list[str]) -> bool:
    return ledger.report(ids)["lost"] == 0


def started(ledger: Ledger) -> dict[str, int]:
    """Task id -> pool process pid, for the ``mark`` tasks that started."""
    path = Path(str(ledger.path) + ".started")
    lines = path.read_text().split("\n") if path.exists() else []
    return {task: int(pid) for task, pid in (line.split() for line in lines if line)}


def process_deaths(worker: Worker) -> int:
    """How many pool processes died under a task (billiard's line for each)."""
    return sum(1 for line in worker.output.splitlines() if "pid:" in line and " exited with " in line)


# --------------------------------------------------------------------------- kills


def test_sigkill_of_the_whole_worker_loses_nothing(cli: CliRun, fault_node: FaultNode, workers: Workers, ledger: Ledger) -> None:
    ids = submit(cli, fault_node, "record", "0", "0.05", count=300)
    first = start_worker(workers, fault_node, ledger, "-c", "2")
    wait_for(lambda: sum(ledger.counts().values()) >= 64, timeout=60, what="64 tasks done")
    first.stop(signal.SIGKILL)
    start_worker(workers, fault_node, ledger, "-c", "2")
    wait_for(lambda: all_done(ledger, ids), timeout=60, what="all 300 done")
    report = ledger.report(ids)
    print("SIGKILL of the worker:", report)
    assert report["lost"] == 0 and report["completed"] == 300


def test_sigkill_of_one_pool_process_reruns_its_task(cli: CliRun, fault_node: FaultNode, workers: Workers, ledger: Ledger) -> None:
    worker = start_worker(workers, fault_node, ledger, "-c", "2")
    [task] = submit(cli, fault_node, "mark", "2")
    pid = wait_for(lambda: started(ledger).get(task), timeout=30, what="the task to start")
    assert isinstance(pid, int)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: task in ledger.done(), timeout=30, what="the killed task to re-run and complete")
    assert started(ledger)[task] != pid  # the re-run, in another process
    assert ledger.counts()[task] == 1
    assert process_deaths(worker) == 1, worker.output
    assert worker.proc is not None and worker.proc.poll() is None  # the worker itself kept running


# --------------------------------------------------------------------------- the broker goes away


def test_broker_restart_keeps_the_queued_tasks(cli: CliRun, fault_node: FaultNode, workers: Workers, ledger: Ledger) -> None:
    ids = submit(cli, fault_node, "record", count=1000)
    assert depth(fault_node.url, QUEUE) == 1000
    restart(fault_node)
    wait_for(lambda: depth(fault_node.url, QUEUE) == 1000, timeout=30, what="1,000 messages after the restart")
    start_worker(workers, fault_node, ledger, "-c", "2")
    wait_for(lambda: all_done(ledger, ids), timeout=60, what="all 1,000 done")
    print("broker restart, queued:", ledger.report(ids))


def test_worker_reconnects_after_a_broker_restart(cli: CliRun, fault_node: FaultNode, workers: Workers, ledger: Ledger) -> None:
    worker = start_worker(workers, fault_node, ledger, "-c", "2")
    restart(fault_node)
    ids = submit(cli, fault_node, "record", count=100)
    wait_for(lambda: all_done(ledger, ids), timeout=60, what="100 new tasks done after the restart")
    assert worker.proc is not None and worker.proc.poll() is None
    print("worker across a broker restart:", ledger.report(ids))


# --------------------------------------------------------------------------- what must not run


def test_poison_task_is_dead_lettered_after_at_most_five_deliveries(
    cli: CliRun, fault_node: FaultNode, workers: Workers, ledger: Ledger
) -> None:
    worker = start_worker(workers, fault_node, ledger, "-c", "2")
    [poison] = submit(cli, fault_node, "die")
    ids = submit(cli, fault_node, "record", count=100)
    wait_for(lambda: all_done(ledger, ids), timeout=60, what="the 100 good tasks")
    wait_for(lambda: depth(fault_node.url, DEAD) == 1, timeout=60, what="the poison task in celery.dead")
    deaths = process_deaths(worker)
    print(f"poison task: {deaths} process deaths, then dead-lettered")
    assert 1 <= deaths <= 5, worker.output
    assert worker.proc is not None and worker.proc.poll() is None
    conn = _channel(fault_node.url)
    try:
        _method, props, _body = conn.channel().basic_get(DEAD, auto_ack=False)
        assert props.headers["id"] == poison
    finally:
        conn.close()


def test_garbage_messages_are_dead_lettered_and_the_worker_goes_on(
    cli: CliRun, fault_node: FaultNode, workers: Workers, ledger: Ledger
) -> None:
    import pika

    worker = start_worker(workers, fault_node, ledger, "-c", "1")
    conn = _channel(fault_node.url)
    try:
        ch = conn.channel()
        json_type = pika.BasicProperties(content_type="application/json", content_encoding="utf-8")
        ch.basic_publish("", QUEUE, b"{this is not json", json_type)
        ch.basic_publish("", QUEUE, b'{"hello": "world"}', json_type)  # JSON, not Celery's protocol
        unknown = pika.BasicProperties(
            content_type="application/json",
            content_encoding="utf-8",
            headers={"lang": "py", "task": "no.such.task", "id": str(uuid.uuid4()), "argsrepr": "()"},
        )
        ch.basic_publish("", QUEUE, json.dumps([[], {}, {}]).encode(), unknown)
    finally:
        conn.close()
    wait_for(lambda: depth(fault_node.url, DEAD) == 3, timeout=30, what="three messages in celery.dead")
    out = worker.output
    assert f"rejected a message on queue {QUEUE} that cannot be decoded" in out, out
    assert worker.proc is not None and worker.proc.poll() is None
    ids = submit(cli, fault_node, "record", count=5)
    wait_for(lambda: all_done(ledger, ids), timeout=30, what="new tasks done after the garbage")


# --------------------------------------------------------------------------- shutdown, countdown


def test_sigterm_lets_short_tasks_finish_and_requeues_long_ones(
    cli: CliRun, fault_node: FaultNode, workers: Workers, ledger: Ledger
) -> None:
    worker = start_worker(workers, fault_node, ledger, "-c", "4", "--grace", "2")
    long = submit(cli, fault_node, "mark", "30", count=2)
    short = submit(cli, fault_node, "mark", "1", count=2)
    wait_for(lambda: len(started(ledger)) == 4, timeout=30, what="the four tasks to start")
    code = worker.stop(signal.SIGTERM, timeout=20)  # SIGKILLed (-9) if it did not exit by itself
    assert code == 0, worker.output
    assert set(short) <= ledger.done(), worker.output
    assert not set(long) & ledger.done()
    assert "re-queuing 2 task(s) still running" in worker.output
    assert "Traceback" not in worker.output, worker.output
    wait_for(lambda: depth(fault_node.url, QUEUE) == 2, timeout=30, what="the long tasks back in the queue")
    conn = _channel(fault_node.url)
    try:
        ch = conn.channel()
        back = set()
        for _ in range(2):
            _method, props, _body = ch.basic_get(QUEUE, auto_ack=True)
            back.add(props.headers["id"])
    finally:
        conn.close()
    assert back == set(long)


def test_countdown_task_holds_up_no_other_task(cli: CliRun, fault_node: FaultNode, workers: Workers, ledger: Ledger) -> None:
    start_worker(workers, fault_node, ledger, "-c", "1")
    r = cli("submit", "record", "--countdown", "4", "--json", "-A", APP, env=_env(fault_node), cwd=ROOT)
    assert r.returncode == 0, r.output
    later = r.json()["task_id"]
    ids = submit(cli, fault_node, "record", count=200)
    wait_for(lambda: all_done(ledger, [*ids, later]), timeout=60, what="201 tasks done")
    order = ledger.path.read_text().split()
    assert order.index(later) > max(order.index(i) for i in ids), "the countdown task ran before the 200 short ones"
