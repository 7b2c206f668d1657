"""The issue's fault test: a cluster member lost with no task lost.

Quorum queues on the local 3-node cluster (a vhost of this module's own), 500 tasks of 20 ms,
one worker and the waiting ``celeryctl submit --count 500 --wait`` both connected first to
member 1 (the URL list starts with it).  Member 1 is SIGKILLed when the worker has completed
about half of them: every task completes (counted on the worker's side, in the fault app's
ledger; a task may run twice, at-least-once), ``submit --wait`` exits 0, and the worker is still
running and consuming on another member, which it moved to by itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeryctl.broker import build_amqp_url
from tests.cluster.conftest import LocalCluster
from tests.conftest import CELERYCTL_WORKER, Workers, wait_for
from tests.faults.conftest import FAULT_APP, ROOT, Ledger

TASKS = 500


@pytest.fixture
def cluster_vhost(local_cluster: LocalCluster) -> Iterator[str]:
    """The failover list of guest URLs on a vhost of this test's own (member 1 first)."""
    name = f"nodeloss-{uuid.uuid4().hex[:8]}"
    runner = local_cluster.runner(1)
    runner.run("add_vhost", "--", name)
    runner.run("set_permissions", "-p", name, "--", "guest", ".*", ".*", ".*")
    urls = [build_amqp_url("guest", "guest", "127.0.0.1", info.port, name) for info in local_cluster.infos]
    try:
        yield ";".join(urls)
    finally:
        local_cluster.heal()
        local_cluster.runner(2).run("delete_vhost", "--", name, check=False)


def test_node_one_killed_halfway_loses_no_task(
    local_cluster: LocalCluster, cluster_vhost: str, workers: Workers, tmp_path: Path
) -> None:
    url = cluster_vhost
    ledger = Ledger(tmp_path / "ledger")
    env = {**ledger.env, "CELERYCTL_BROKER_URL": url, "CELERYCTL_RESULT_BACKEND": "rpc://"}
    worker = workers.start(CELERYCTL_WORKER, url, "-A", FAULT_APP, "-c", "4", env=env, cwd=ROOT)

    # A replica of the worker's queue on every member (x-quorum-initial-group-size 3).
    queues = local_cluster.runner(1).json("list_queues", "-p", url.split("/")[-1], "name", "members")
    members = {q["name"]: q["members"] for q in queues}
    assert len(members["celery"]) == 3, members

    submit_env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_"))}
    submit_env.update(env, CELERYCTL_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    submit = subprocess.Popen(
        [sys.executable, "-m", "celeryctl", "submit", "-A", FAULT_APP, "record", "0", "0.02"]
        + ["--count", str(TASKS), "--wait", "--json", "--timeout", "80"],
        cwd=ROOT,
        env=submit_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: sum(ledger.counts().values()) >= TASKS // 2, timeout=40, what="half of the tasks")
        killed_at = time.monotonic()
        local_cluster.kill(1)
        done_before = sum(ledger.counts().values())
        # The tasks running at the kill finish at once; beyond those (4 running, 4 reserved) the
        # worker consumes again, from another member.
        wait_for(lambda: sum(ledger.counts().values()) > done_before + 8, timeout=40, what="tasks after the kill")
        recovery = time.monotonic() - killed_at
        out, err = submit.communicate(timeout=80)
    finally:
        if submit.poll() is None:
            submit.send_signal(signal.SIGKILL)
            submit.wait()

    counts = ledger.counts()
    twice = sorted(tid for tid, n in counts.items() if n > 1)
    print(f"recovery {recovery:.1f} s after the kill; {len(twice)} task(s) ran twice")
    assert submit.returncode == 0, f"submit: {out[-2000:]}\n{err[-2000:]}\nworker: {worker.output[-1500:]}"
    assert "Traceback" not in err
    doc = json.loads(out)
    assert len(counts) == TASKS, f"{TASKS - len(counts)} tasks lost; ran twice: {twice}"
    assert (doc.get("succeeded"), doc.get("failed")) == (TASKS, 0), doc
    # The worker moved to another member by itself: still running, and it answers `status`.
    assert worker.proc is not None and worker.proc.poll() is None

    def listed() -> bool:
        status = subprocess.run(
            [sys.executable, "-m", "celeryctl", "status", "-A", FAULT_APP, "--json"],
            cwd=ROOT,
            env=submit_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return status.returncode == 0 and worker.name in status.stdout

    wait_for(listed, timeout=20, interval=0.5, what="the worker to answer status after the failover")
