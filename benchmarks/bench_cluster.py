#!/usr/bin/env python3
"""Benchmark: a 3-node cluster with replicated quorum queues against one node with classic queues.

In one run, each on brokers of its own (temp dirs, free ports):

* anchor: ``celeryctl submit record --count N --wait`` (the fault app, tasks of 0 s) on classic
  queues on one node, with ``celeryctl worker -c 2``;
* ours: the same on quorum queues replicated on the 3 members of a local cluster (the URL list);
* recovery: on the cluster, 2,000 tasks of 20 ms with the worker and submit connected first to
  member 1; member 1 is SIGKILLed when half are done; the time from its death until the worker
  completes tasks again (beyond the 2 x concurrency that were running or reserved at the kill).

Prints both rates, the ratio (cluster / single) and the recovery time.

Usage: python3 benchmarks/bench_cluster.py [--count N]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from celeryctl.rabbitmq.cluster import Cluster  # noqa: E402
from celeryctl.rabbitmq.node import Node, pick_free_port  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import stop_worker  # noqa: E402

APP = "tests.faults.faultapp"
CONCURRENCY = 2


def _env(tmp: Path, url: str, plain: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_"))}
    env.update(
        PYTHONPATH=str(REPO),
        CELERYCTL_BROKER_URL=url,
        CELERYCTL_RESULT_BACKEND="rpc://",
        CELERYCTL_DATA_DIR=str(tmp / "cli"),
        FAULT_LEDGER=str(tmp / "ledger"),
    )
    if plain:
        env["FAULT_PLAIN"] = "1"  # the fault app without celeryctl.configure: Celery's classic queues
    return env


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "celeryctl", "worker", "-A", APP, "-c", str(CONCURRENCY), "-n", f"bench{os.getpid()}@x"],
        cwd=REPO,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while b" ready." not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc


def _submit(env: dict[str, str], count: int, seconds: float = 0.0) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "celeryctl", "submit", "-A", APP, "record", "0", str(seconds)]
    argv += ["--count", str(count), "--wait", "--json", "--timeout", "300"]
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rate(env: dict[str, str], tmp: Path, count: int) -> float:
    worker = _worker(env, tmp / "worker.log")
    try:
        started = time.monotonic()
        out, err = _submit(env, count).communicate()
        wall = time.monotonic() - started
        doc = json.loads(out) if out.strip() else {}
        if doc.get("succeeded") != count:
            raise SystemExit(f"submit failed: {err}")
        return count / wall
    finally:
        stop_worker(worker)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _recovery(cluster: Cluster, env: dict[str, str], tmp: Path, count: int = 2000) -> tuple[float, int, int]:
    ledger = Path(env["FAULT_LEDGER"])
    ledger.write_text("")
    worker = _worker(env, tmp / "worker-recovery.log")
    try:
        submit = _submit(env, count, 0.02)
        while _lines(ledger) < count // 2:
            time.sleep(0.02)
        info = cluster.infos()[0]
        assert info.pid is not None
        killed_at = time.monotonic()
        os.kill(info.pid, signal.SIGKILL)
        at_kill = _lines(ledger)
        while _lines(ledger) <= at_kill + 2 * CONCURRENCY:
            time.sleep(0.02)
        recovery = time.monotonic() - killed_at
        out, err = submit.communicate(timeout=300)
        doc = json.loads(out) if out.strip() else {}
        ids = ledger.read_text().splitlines()
        if doc.get("succeeded") != count:
            raise SystemExit(f"submit after the kill failed: {err}")
        return recovery, len(set(ids)), len(ids) - len(set(ids))
    finally:
        stop_worker(worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000)
    opts = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))

    node = Node(tmp / "single" / "node")
    info, _ = node.start(pick_free_port([], set()))
    try:
        single = _rate(_env(tmp / "single", info.url, plain=True), tmp / "single", opts.count)
    finally:
        node.stop()
    print(f"single node, classic queues: {single:7.1f} tasks/s  (submit --count {opts.count} --wait)")

    cluster = Cluster(tmp / "cluster")
    base = pick_free_port([p for p in range(13000, 14000, 7)], set())
    cluster.start(3, base)
    try:
        url = cluster.url()
        assert url is not None
        env = _env(tmp / "cluster", url, plain=False)
        replicated = _rate(env, tmp / "cluster", opts.count)
        print(f"3-node cluster, quorum x3:   {replicated:7.1f} tasks/s  ratio {replicated / single:.2f}")
        recovery, distinct, twice = _recovery(cluster, env, tmp / "cluster")
        print(
            f"member 1 SIGKILLed: tasks completed again {recovery:.1f} s after its death "
            f"(issue: last task 22 s after); {distinct} distinct done, {twice} ran twice"
        )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
