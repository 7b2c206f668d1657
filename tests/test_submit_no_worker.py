"""`submit --wait` on a queue that no worker consumes says so instead of waiting silently."""

from __future__ import annotations

import re
import uuid

from tests.conftest import CliRun, RabbitNode, wait_for


def test_wait_on_a_queue_without_consumers_warns(cli: CliRun, rabbit: RabbitNode) -> None:
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    env = {"CELERYCTL_BROKER_URL": rabbit.url}
    r = cli("submit", "add", "1", "2", "--queue", queue, "--wait", "--timeout", "1", env=env)
    assert r.returncode == 8, r.output  # the timeout's exit code
    assert r.stderr.splitlines()[0] == (
        f"warning: no worker consumes queue '{queue}' yet: the task waits there until one starts "
        f"(celeryctl worker -Q {queue}); Ctrl-C stops waiting and leaves it queued"
    )
    task_id = re.search(r"celeryctl\.demo\.add\[([0-9a-f-]{36})\]", r.stderr)
    assert task_id, r.stderr
    assert r.stderr.splitlines()[-2:] == [
        f"error: task celeryctl.demo.add[{task_id[1]}] did not finish within 1 s (last state PENDING); "
        "it may still be running",
        f"hint: wait longer with --timeout; with the rpc:// backend only this process could receive the result of "
        f"{task_id[1]}, a later one cannot: for results you can fetch later use a backend that stores them, "
        "e.g. --backend db+sqlite:///results.db or redis://localhost:6379/0 (on the worker too)",
    ]
    assert "Traceback" not in r.output
    # the task was submitted and still waits in the queue
    def counts() -> tuple[int, int]:  # rabbitmqctl's counts of a quorum queue lag by a few seconds
        rows = rabbit.runner().json("list_queues", "name", "messages", "consumers")
        row = next(q for q in rows if q["name"] == queue)
        return int(row["messages"]), int(row["consumers"])

    wait_for(lambda: counts() == (1, 0), timeout=30, what=f"the task to show in queue {queue}")
