"""`submit --wait` on a queue that no worker consumes says so instead of waiting silently."""

from __future__ import annotations

import uuid

from tests.conftest import CliRun, RabbitNode


def test_wait_on_a_queue_without_consumers_warns(cli: CliRun, rabbit: RabbitNode) -> None:
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    env = {"CELERYCTL_BROKER_URL": rabbit.url}
    r = cli("submit", "add", "1", "2", "--queue", queue, "--wait", "--timeout", "1", env=env)
    assert r.returncode == 8, r.output  # the timeout's exit code
    assert f"no worker consumes queue '{queue}'" in r.stderr
    assert f"celeryctl worker -Q {queue}" in r.stderr
    assert "may still be running" in r.stderr or "still" in r.stderr
    assert "Traceback" not in r.output
    # the task was submitted and still waits in the queue
    queues = {q["name"]: q for q in rabbit.runner().json("list_queues", "name", "messages", "consumers")}
    assert queues[queue]["messages"] == 1 and queues[queue]["consumers"] == 0
