"""``submit`` on quorum queues: countdowns travel through the broker (one task and --count), priorities refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CELERYCTL_WORKER, REPO, CliRun, VhostFactory, Workers, wait_for

APP = "tests.submit_quorum_app"
#: kombu's native delayed delivery: celery_delayed_0 .. celery_delayed_27.
DELAY_QUEUES = [f"celery_delayed_{level}" for level in range(28)]


def _depths(url: str, queues: list[str]) -> dict[str, int]:
    """Ready messages per queue (passive declares; a queue that does not exist is absent)."""
    import pika
    import pika.exceptions

    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        found: dict[str, int] = {}
        for name in queues:
            channel = conn.channel()
            try:
                found[name] = channel.queue_declare(name, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker:
                continue
            channel.close()
        return found
    finally:
        conn.close()


def _delayed(url: str) -> int:
    return sum(_depths(url, DELAY_QUEUES).values())


def _stamps(path: Path) -> dict[str, tuple[float, float | None]]:
    """task id -> (ran at, ETA it carried), from the app's file."""
    rows: dict[str, tuple[float, float | None]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        tid, ran, eta = line.split()
        rows[tid] = (float(ran), None if eta == "-" else float(eta))
    return rows


def test_countdown_before_any_worker_ran_waits_in_the_broker(
    cli: CliRun, make_vhost: VhostFactory, tmp_path: Path
) -> None:
    """No worker ever ran on the vhost: submit declares the delay topology itself (was exit 6, no exchange)."""
    vhost = make_vhost("subq-fresh")
    env = {"CELERYCTL_BROKER_URL": vhost.url}
    assert "celery_delayed_27" not in _depths(vhost.url, ["celery_delayed_27"])

    started = time.time()
    many = cli("submit", "stamp", "--count", "20", "--countdown", "30", "--json", "-A", APP, env=env, cwd=REPO)
    assert many.returncode == 0, many.output
    one = cli("submit", "stamp", "--countdown", "0.5", "-A", APP, env=env, cwd=REPO)  # kombu refuses < 1 s
    assert one.returncode == 0, one.output
    assert "Traceback" not in many.output + one.output

    # The sub-second one became one second: it reaches the app's queue, no earlier.
    wait_for(lambda: _depths(vhost.url, ["celery"]) == {"celery": 1}, timeout=20, what="the 1 s task in its queue")
    assert time.time() - started >= 1
    # The 20 wait in the broker's delay queues, not in the app's queue (where a worker would hold them).
    assert _delayed(vhost.url) == 20


def test_count_with_countdown_does_not_block_the_worker(
    cli: CliRun, make_vhost: VhostFactory, workers: Workers, tmp_path: Path
) -> None:
    """``--count 20 --countdown`` beside a stream of short tasks: all complete, none before its time."""
    vhost = make_vhost("subq")
    stamps = tmp_path / "stamps.txt"
    env = {"CELERYCTL_BROKER_URL": vhost.url, "STAMPS": str(stamps)}
    workers.start(CELERYCTL_WORKER, vhost.url, "-A", APP, "-c", "2", env=env, cwd=REPO)

    countdown = 5.0
    argv = [sys.executable, "-m", "celeryctl", "submit", "stamp", "--count", "20", "--countdown", str(countdown)]
    sent_after = time.time()
    delayed = subprocess.Popen(
        [*argv, "--wait", "--json", "-A", APP],
        cwd=REPO,
        env={**_clean_env(tmp_path), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: _delayed(vhost.url) == 20, timeout=30, what="the 20 delayed tasks in the delay queues")
        short = cli("submit", "stamp", "--count", "50", "--wait", "--json", "-A", APP, env=env, cwd=REPO)
        out, err = delayed.communicate(timeout=60)
    finally:
        if delayed.poll() is None:
            delayed.kill()
            delayed.wait()

    assert short.returncode == 0, short.output
    assert (short.json()["succeeded"], short.json()["failed"]) == (50, 0)
    assert delayed.returncode == 0, err
    doc = json.loads(out)
    assert (doc["succeeded"], doc["failed"]) == (20, 0)

    rows = _stamps(stamps)
    late = {tid: row for tid, row in rows.items() if row[1] is not None}
    assert len(late) == 20 and len(rows) == 70
    for ran, eta in late.values():
        assert eta is not None and eta >= sent_after + countdown - 0.01
        assert ran >= eta  # none before its time
    # The worker held none of them while it ran the short stream: they were in the broker until due.
    assert max(ran for ran, eta in rows.values() if eta is None) < min(ran for ran, _ in late.values())


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_"))}
    env.update(CELERYCTL_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1", COLUMNS="200")
    return env


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_priority_is_refused_on_quorum_and_taken_on_classic(
    cli: CliRun, make_vhost: VhostFactory, queue_type: str
) -> None:
    vhost = make_vhost(f"subq-prio-{queue_type}")
    r = cli(
        "submit",
        "add",
        "1",
        "2",
        "--priority",
        "3",
        "--queue-type",
        queue_type,
        env={"CELERYCTL_BROKER_URL": vhost.url},
    )
    assert "Traceback" not in r.output
    if queue_type == "quorum":
        assert r.returncode == 2, r.output
        assert r.stdout == ""
        assert r.stderr.splitlines()[0] == (
            "error: --priority has no effect on a quorum queue (RabbitMQ 3.x quorum queues have no priorities)"
        )
        assert r.stderr.count("error:") == 1
    else:
        assert r.returncode == 0, r.output
        assert len(r.stdout.strip()) == 36  # the task id
