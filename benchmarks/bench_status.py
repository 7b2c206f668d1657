#!/usr/bin/env python3
"""`celeryctl status --json` vs `celery -A app status` and `celery -A app inspect stats`.

Own RabbitMQ node (temp dir, free port) and one real worker of the demo app.  Goal: the whole
``celeryctl status`` (workers with pool, concurrency, processed, active, uptime AND queue depths)
in under 1.5 s of wall time, where the anchors only list workers (``status``) or their stats.
Median wall time of whole processes (interpreter start included), all in this one run.

Usage: python3 benchmarks/bench_status.py [RUNS]   (default 5)
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from celeryctl.rabbitmq.node import Node, pick_free_port  # noqa: E402

GOAL = 1.5


def median_wall(argv: list[str], env: dict[str, str], runs: int, cwd: Path) -> tuple[float, int]:
    times, code = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, env=env, cwd=cwd, timeout=120)
        times.append(time.perf_counter() - t0)
        code = proc.returncode
    return statistics.median(times), code


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    tmp = Path(tempfile.mkdtemp(prefix="bench-status-"))
    node = Node(tmp / "data" / "node")
    info, _ = node.start(pick_free_port([], set()))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_"))}
    base["PYTHONPATH"] = str(REPO)
    worker_log = tmp / "worker.log"
    wenv = {**base, "CELERY_BROKER_URL": info.url, "CELERY_RESULT_BACKEND": "rpc://"}
    with open(worker_log, "wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "celeryctl.demo:app", "worker", "-c", "1", "--without-mingle",
             "--without-gossip", "-n", "bench@%h", "--loglevel", "INFO"],
            stdout=out, stderr=subprocess.STDOUT, env=wenv, cwd=tmp,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while " ready." not in worker_log.read_text(errors="replace"):
            if time.monotonic() > deadline or worker.poll() is not None:
                print(worker_log.read_text(errors="replace"))
                return 1
            time.sleep(0.1)
        ours = [sys.executable, "-m", "celeryctl", "status", "--json"]
        oenv = {**base, "CELERYCTL_DATA_DIR": str(tmp / "data")}
        aenv = {**base, "CELERY_BROKER_URL": info.url}
        status = [sys.executable, "-m", "celery", "-A", "celeryctl.demo:app", "status"]
        stats = [sys.executable, "-m", "celery", "-A", "celeryctl.demo:app", "inspect", "stats"]
        subprocess.run(ours, capture_output=True, env=oenv, cwd=tmp)  # warm the page cache
        check = subprocess.run(ours, capture_output=True, env=oenv, cwd=tmp, text=True)
        if '"bench@' not in check.stdout:
            print("celeryctl status did not list the worker:\n" + check.stdout + check.stderr)
            return 1

        o, o_rc = median_wall(ours, oenv, runs, tmp)
        s, s_rc = median_wall(status, aenv, runs, tmp)
        i, i_rc = median_wall(stats, aenv, runs, tmp)
        print(f"RabbitMQ {info.version} on port {info.port}, one worker; median wall time of {runs} runs")
        print(f"celeryctl status --json (workers + queues)  {o:5.2f} s  exit {o_rc}")
        print(f"celery -A app status (anchor)               {s:5.2f} s  exit {s_rc}  ratio {o / s:4.2f}")
        print(f"celery -A app inspect stats (anchor)        {i:5.2f} s  exit {i_rc}  ratio {o / i:4.2f}")
        print(f"goal: celeryctl status < {GOAL:.1f} s  {'PASS' if o < GOAL else 'MISS'}")
        return 0
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
