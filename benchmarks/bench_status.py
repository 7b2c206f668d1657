#!/usr/bin/env python3
"""`celeryctl status --json` vs `celery -A app status` and `celery -A app inspect stats`.

Own RabbitMQ node (temp dir, free port) and one real worker of the demo app.  Goal: the whole
``celeryctl status`` (workers with pool, concurrency, processed, active, uptime AND queue depths)
in under 1.5 s of wall time, where the anchors only list workers (``status``) or their stats.
Median wall time of whole processes (interpreter start included), all in this one run.

Usage: python3 benchmarks/bench_status.py [RUNS]   (default 5)
"""

from __future__ import annotations

import subprocess
import sys

from _common import median_wall, node_with_demo_worker

GOAL = 1.5


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    with node_with_demo_worker("bench-status-") as setup:
        tmp, info, base = setup.tmp, setup.info, setup.base_env
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


if __name__ == "__main__":
    raise SystemExit(main())
