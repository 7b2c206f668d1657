"""``celeryctl dead``: dead-lettered tasks listed (nothing lost or reordered), replayed, dropped.

Against the session node (a vhost of this module's own) and a real ``celeryctl worker``: a
poison task dead-lettered for its delivery limit, a task rejected while a flag file exists and
replayed once it is gone (counted in the ledger), and messages that are not Celery tasks,
dead-lettered by RabbitMQ itself from a quorum queue.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from celeryctl import topology
from tests.conftest import CELERYCTL_WORKER, CliResult, CliRun, Vhost, VhostFactory, Worker, Workers, wait_for
from tests.faults.conftest import ROOT, Ledger

DEAD_APP = "tests.faults.dead_app"
# A delivery limit of 2 for this module's app (worker, submit) and for `dead` (its setting): the
# poison task dies twice, not five times (each death is noticed up to 5 s later).  The default
# limit of 5 with a real poison task: tests/faults/test_worker_faults.py.
MAX_DELIVERIES = 2
LIMIT_ENV = {"FAULT_MAX_DELIVERIES": str(MAX_DELIVERIES), "CELERYCTL_MAX_DELIVERIES": str(MAX_DELIVERIES)}


@pytest.fixture(scope="module")
def vhost(make_vhost: VhostFactory) -> Vhost:
    return make_vhost("dead")


@pytest.fixture(scope="module")
def module_ledger(tmp_path_factory: pytest.TempPathFactory) -> Ledger:
    return Ledger(tmp_path_factory.mktemp("dead-ledger") / "ledger.txt")


@pytest.fixture(scope="module")
def worker(module_workers: Workers, vhost: Vhost, module_ledger: Ledger) -> Iterator[Worker]:
    env = {**module_ledger.env, **LIMIT_ENV, "CELERYCTL_BROKER_URL": vhost.url}
    yield module_workers.start(CELERYCTL_WORKER, vhost.url, "-A", DEAD_APP, "-c", "2", env=env, cwd=ROOT)


def run(cli: CliRun, vhost: Vhost, *args: str) -> CliResult:
    result = cli(*args, env={**LIMIT_ENV, "CELERYCTL_BROKER_URL": vhost.url}, cwd=ROOT)
    assert "Traceback" not in result.output, result.output
    return result


def listed(cli: CliRun, vhost: Vhost, *args: str) -> dict[str, Any]:
    result = run(cli, vhost, "dead", *args, "--json")
    assert result.returncode == 0, result.output
    doc: dict[str, Any] = result.json()  # exactly one document (json.loads refuses anything more)
    assert doc["ok"] is True
    return doc


def depth(url: str, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


def submit(cli: CliRun, vhost: Vhost, *args: str) -> str:
    result = run(cli, vhost, "submit", "-A", DEAD_APP, *args, "--json")
    assert result.returncode == 0, result.output
    return str(result.json()["task_id"])


def test_poison_task_is_dead_lettered_and_listed(cli: CliRun, vhost: Vhost, worker: Worker, module_ledger: Ledger) -> None:
    poison = submit(cli, vhost, "die")
    good = submit(cli, vhost, "record", "1")
    wait_for(lambda: depth(vhost.url, "celery.dead") == 1, timeout=60, what="the poison task in celery.dead")
    wait_for(lambda: good in module_ledger.done(), timeout=30, what="the good task done beside it")
    exits = len(re.findall(r"Process '[^']+' pid:\d+ exited with 'exitcode 1'", worker.output))
    assert 1 <= exits <= MAX_DELIVERIES, worker.output

    doc = listed(cli, vhost, "-A", DEAD_APP)
    assert doc["count"] == 1 and doc["shown"] == 1
    assert doc["queues"] == [{"queue": "celery.dead", "count": 1}]
    (task,) = doc["tasks"]
    assert task["id"] == task["key"] == poison
    assert task["task"] == "tests.faults.faultapp.die"
    assert task["reason"] == "delivery_limit"
    assert task["deliveries"] == MAX_DELIVERIES  # max_deliveries: the queue's limit
    assert task["queue"] == "celery" and task["dead_queue"] == "celery.dead"
    assert task["died_at"] and task["is_task"] is True

    # Listed again (without -A: the default queue celery), the same, and still in the queue.
    assert listed(cli, vhost)["tasks"] == doc["tasks"]
    assert depth(vhost.url, "celery.dead") == 1

    text = run(cli, vhost, "dead", "celery")
    assert text.returncode == 0, text.output
    assert poison in text.stdout and "delivery limit" in text.stdout
    assert "1 dead-lettered task(s)" in text.stdout


def test_replayed_task_runs_again_and_succeeds(
    cli: CliRun, vhost: Vhost, worker: Worker, module_ledger: Ledger, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    flag.touch()
    task_id = submit(cli, vhost, "flagged", str(flag))

    def dead_keys() -> list[str]:
        return [t["key"] for t in listed(cli, vhost)["tasks"]]

    wait_for(lambda: task_id in dead_keys(), timeout=30, what="the rejected task in celery.dead")
    (task,) = [t for t in listed(cli, vhost)["tasks"] if t["key"] == task_id]
    assert task["reason"] == "rejected" and task["task"] == "tests.faults.dead_app.flagged"
    assert task["queue"] == "celery" and str(flag) in task["args"]
    assert task_id not in module_ledger.done()

    flag.unlink()
    before = depth(vhost.url, "celery.dead")
    result = run(cli, vhost, "dead", "replay", task_id, "no-such-id", "--json")
    assert result.returncode == 1, result.output  # the matched one is replayed, the other named
    doc = result.json()
    assert doc["ok"] is False
    assert doc["error"]["details"]["replayed"] == [task_id]
    assert doc["error"]["details"]["not_found"] == ["no-such-id"]
    assert "no-such-id" in doc["error"]["message"]

    wait_for(lambda: task_id in module_ledger.done(), timeout=30, what="the replayed task to complete")
    assert module_ledger.counts()[task_id] == 1
    assert task_id not in dead_keys()
    assert depth(vhost.url, "celery.dead") == before - 1  # the rest (the poison task) still there


def _dead_letter_garbage(url: str, queue: str, bodies: list[bytes]) -> None:
    """Publish ``bodies`` to quorum queue ``queue`` and reject each: RabbitMQ dead-letters them."""
    topology.declare(url, [queue], topology.QueuePolicy())
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = conn.channel()
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
        for _ in bodies:
            method, _props, _body = channel.basic_get(queue, auto_ack=False)
            assert method is not None
            channel.basic_reject(method.delivery_tag, requeue=False)
    finally:
        conn.close()


def test_garbage_listed_in_order_replayed_and_dropped(cli: CliRun, vhost: Vhost) -> None:
    bodies = [b"garbage one", b"\x00\xffnot utf-8", json.dumps({"not": "a task"}).encode()]
    keys = ["sha1:" + hashlib.sha1(b).hexdigest()[:12] for b in bodies]
    _dead_letter_garbage(vhost.url, "junk", bodies)
    wait_for(lambda: depth(vhost.url, "junk.dead") == 3, timeout=30, what="3 messages in junk.dead")

    doc = listed(cli, vhost, "junk")
    assert [t["key"] for t in doc["tasks"]] == keys  # in the order they died
    assert {(t["reason"], t["queue"], t["is_task"], t["id"]) for t in doc["tasks"]} == {("rejected", "junk", False, None)}
    assert listed(cli, vhost, "junk.dead")["tasks"] == doc["tasks"]  # read twice: nothing lost or moved

    partial = run(cli, vhost, "dead", "junk", "--limit", "2")
    assert partial.returncode == 0 and "showing 2 of 3" in partial.stdout, partial.output
    assert listed(cli, vhost, "junk", "--limit", "2")["shown"] == 2

    replayed = run(cli, vhost, "dead", "replay", keys[1], "-Q", "junk", "--json")
    assert replayed.returncode == 0, replayed.output
    assert replayed.json()["replayed"] == [keys[1]]
    assert depth(vhost.url, "junk") == 1 and depth(vhost.url, "junk.dead") == 2
    assert [t["key"] for t in listed(cli, vhost, "junk")["tasks"]] == [keys[0], keys[2]]

    refused = run(cli, vhost, "dead", "drop", "--all", "junk")
    assert refused.returncode == 11, refused.output
    assert "nothing was deleted" in refused.stderr
    assert depth(vhost.url, "junk.dead") == 2

    missing = run(cli, vhost, "dead", "drop", "sha1:000000000000", "-Q", "junk", "--json")
    assert missing.returncode == 1 and missing.json()["error"]["details"]["not_found"] == ["sha1:000000000000"]

    dropped = run(cli, vhost, "dead", "drop", "--all", "--yes", "junk", "--json")
    assert dropped.returncode == 0, dropped.output
    assert dropped.json()["dropped"] == [keys[0], keys[2]]
    assert depth(vhost.url, "junk.dead") == 0
    assert listed(cli, vhost, "junk")["count"] == 0


def test_errors(cli: CliRun, vhost: Vhost) -> None:
    unknown = run(cli, vhost, "dead", "nosuch")
    assert unknown.returncode == 1
    assert "dead-letter queue 'nosuch.dead' does not exist" in unknown.stderr

    down = cli("dead", "--json", "--broker", "amqp://guest:guest@127.0.0.1:1//")
    assert down.returncode == 6 and down.json()["error"]["code"] == "unreachable"

    no_ids = run(cli, vhost, "dead", "replay")
    assert no_ids.returncode == 2 and "name the task ids, or pass --all" in no_ids.stderr
