"""convert-queue: a classic queue becomes a quorum queue with every message kept, counted.

Against the session node (nothing here kills it) with real worker processes; the messages are
read back by browsing (get without ack, then the channel closes and they return), and the
tasks are counted on the worker's side (the fault app's ledger).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.conftest import CliRun, RabbitNode, Vhost, VhostFactory, Workers, wait_for
from tests.faults.conftest import FAULT_APP, ROOT, Ledger

N = 2000


@pytest.fixture(scope="module")
def vhost(make_vhost: VhostFactory) -> Vhost:
    return make_vhost("convert")


def _queues(rabbit: RabbitNode, vhost: Vhost) -> dict[str, dict[str, Any]]:
    rows = rabbit.runner().json(
        "list_queues", "-p", vhost.name, "name", "type", "messages", "consumers", "arguments"
    )
    return {row["name"]: row for row in rows}


def _browse(url: str, queue: str) -> Counter[tuple[bytes, str, str]]:
    """Every message of ``queue``: (body, headers without the broker's delivery count, delivery
    mode), read without acknowledging (they return to the queue when the channel closes)."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = conn.channel()
        seen: Counter[tuple[bytes, str, str]] = Counter()
        while True:
            method, props, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                return seen
            headers = {k: v for k, v in (props.headers or {}).items() if k != "x-delivery-count"}
            seen[(body, repr(sorted(headers.items())), str(props.correlation_id))] += 1
    finally:
        conn.close()


def _fill(url: str, queue: str, count: int, *, declare: bool = True) -> None:
    """``count`` persistent messages (every third with headers), confirmed, on a classic queue."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = conn.channel()
        if declare:
            channel.queue_declare(queue, durable=True)
        channel.confirm_delivery()
        for i in range(count):
            headers = {"i": i, "kind": "test"} if i % 3 == 0 else None
            channel.basic_publish(
                "", queue, f"{queue}-{i}".encode(), pika.BasicProperties(delivery_mode=2, headers=headers)
            )
    finally:
        conn.close()


def test_classic_queue_becomes_quorum_with_every_task(
    cli: CliRun, rabbit: RabbitNode, vhost: Vhost, workers: Workers, ledger: Ledger
) -> None:
    url = vhost.url
    app = ["-A", FAULT_APP, "-b", url]
    plain = {"FAULT_PLAIN": "1"}  # the app without celeryctl.configure: Celery's classic queue
    sent = cli("submit", "record", "--count", str(N), "--json", *app, cwd=ROOT, env=plain)
    assert sent.returncode == 0, sent.output
    ids = sent.json()["ids"]
    assert len(set(ids)) == N
    before = _browse(url, "celery")
    assert sum(before.values()) == N

    refused = cli("submit", "record", *app, cwd=ROOT)  # quorum, the default
    assert refused.returncode == 3, refused.output
    assert "already exists as a classic queue" in refused.stderr
    assert "celeryctl convert-queue celery --to quorum" in refused.stderr
    assert "Traceback" not in refused.output

    plan = cli("convert-queue", "celery", "--dry-run", "-b", url)
    assert plan.returncode == 0, plan.output
    assert "would convert queue 'celery' (classic) to quorum (max_deliveries 5)" in plan.stdout
    assert _queues(rabbit, vhost)["celery"]["type"] == "classic"

    done = cli("convert-queue", "celery", "--json", "-b", url)
    assert done.returncode == 0, done.output
    doc = done.json()
    assert (doc["ok"], doc["from_type"], doc["to_type"]) == (True, "classic", "quorum")
    assert (doc["moved_out"], doc["moved"], doc["resumed"]) == (N, N, False)
    assert doc["seconds"] > 0

    queues = _queues(rabbit, vhost)
    assert queues["celery"]["type"] == "quorum"
    assert "celery.converting" not in queues
    assert "celery.dead" in queues
    assert _browse(url, "celery") == before  # the same bodies and headers, each once

    again = cli("convert-queue", "celery", "-b", url)
    assert again.returncode == 0, again.output
    assert "already quorum (max_deliveries 5): nothing to do" in again.stdout

    workers.start(("celeryctl", "worker"), url, *app, "-c", "2", env=ledger.env, cwd=ROOT)
    wait_for(lambda: len(ledger.done()) >= N, timeout=90, what=f"the worker to run the {N} tasks")
    assert ledger.report(ids) == {"submitted": N, "completed": N, "lost": 0, "duplicated": 0}


def test_queue_with_a_consumer_is_refused_and_untouched(cli: CliRun, rabbit: RabbitNode, vhost: Vhost) -> None:
    import pika

    _fill(vhost.url, "busy", 20)
    conn = pika.BlockingConnection(pika.URLParameters(vhost.url))
    try:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=1)
        channel.basic_consume("busy", lambda *_a: None)
        wait_for(lambda: _queues(rabbit, vhost)["busy"]["consumers"] == 1, what="the consumer")
        result = cli("convert-queue", "busy", "-b", vhost.url)
        assert result.returncode == 1, result.output
        assert "queue 'busy' has 1 consumer(s); it can only be converted while nothing consumes it" in result.stderr
        assert "hint: stop the workers that consume 'busy'" in result.stderr
        assert "Traceback" not in result.output
        queues = _queues(rabbit, vhost)
        assert (queues["busy"]["type"], queues["busy"]["messages"]) == ("classic", 20)
        assert "busy.converting" not in queues
    finally:
        conn.close()


def test_interrupted_conversion_resumes_from_the_holding_queue(
    cli: CliRun, rabbit: RabbitNode, vhost: Vhost
) -> None:
    _fill(vhost.url, "resume", 300)
    _fill(vhost.url, "resume.converting", 200)  # what a run stopped half-way leaves behind
    expected = _browse(vhost.url, "resume") + _browse(vhost.url, "resume.converting")

    result = cli("convert-queue", "resume", "--max-deliveries", "3", "-b", vhost.url)
    assert result.returncode == 0, result.output
    assert "resuming an interrupted conversion: 200 message(s) were in 'resume.converting'" in result.stderr
    assert "converted queue 'resume' from classic to quorum (max_deliveries 3): 500 message(s) moved" in result.stdout

    queues = _queues(rabbit, vhost)
    assert queues["resume"]["type"] == "quorum"
    assert "resume.converting" not in queues
    assert _browse(vhost.url, "resume") == expected


def test_back_to_classic_and_missing_queue(cli: CliRun, rabbit: RabbitNode, vhost: Vhost) -> None:
    _fill(vhost.url, "back", 50)
    assert cli("convert-queue", "back", "-b", vhost.url).returncode == 0
    result = cli("convert-queue", "back", "--to", "classic", "--json", "-b", vhost.url)
    assert result.returncode == 0, result.output
    doc = result.json()
    assert (doc["from_type"], doc["to_type"], doc["moved"]) == ("quorum", "classic", 50)
    assert _queues(rabbit, vhost)["back"]["type"] == "classic"

    missing = cli("convert-queue", "nosuch", "--json", "-b", vhost.url)
    assert missing.returncode == 1
    error = missing.json()["error"]
    assert (error["code"], error["message"]) == (
        "queue_not_found",
        f"queue 'nosuch' does not exist on vhost '{vhost.name}'",
    )
