#!/usr/bin/env python3
"""`celeryctl status --json` vs `celery -A app status` and `celery -A app inspect stats`.

Own RabbitMQ node (temp dir, free port) and one real worker of the demo app.  Goal: the whole
``celeryctl status`` (workers with pool, concurrency, processed, active, uptime AND queue depths)
in under 1.5 s of wall time, where the anchors only list workers (``status``) or their stats.
Median wall time of whole processes (interpreter start included), all in this one run.

Then, on a second node with the management plugin (no worker): ``status --json`` and
``queues --json`` listing the queues through the management API against the same commands
through rabbitmqctl on the same node (as a user the API refuses: celeryctl falls back to
rabbitmqctl, the path of a node without the plugin, plus one refused HTTP request).

Usage: python3 benchmarks/bench_status.py [RUNS]   (default 5)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import REPO, median_wall, node_with_demo_worker

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
    return api_vs_rabbitmqctl(runs)


def api_vs_rabbitmqctl(runs: int) -> int:
    """status and queues: the management API against rabbitmqctl, on one management node."""
    from celeryctl.rabbitmq.node import Node, pick_free_port

    tmp = Path(tempfile.mkdtemp(prefix="bench-status-api-"))
    node = Node(tmp / "data" / "node")
    info, _ = node.start(pick_free_port([], set()), management=True)
    try:
        runner = node.runner(info)
        user, password = "bench-ctl", "bench-ctl-pw"  # no tag: the API refuses it, rabbitmqctl lists
        runner.run("add_user", "--", user, stdin=password + "\n", secrets=[password])
        runner.run("set_permissions", "-p", "/", "--", user, ".*", ".*", ".*")
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_"))}
        base.update(PYTHONPATH=str(REPO), CELERYCTL_DATA_DIR=str(tmp / "data"))
        api_env = {**base, "CELERYCTL_BROKER_URL": info.url}
        ctl_env = {**base, "CELERYCTL_BROKER_URL": info.url.replace("guest:guest@", f"{user}:{password}@")}
        print(f"\nRabbitMQ {info.version} with management, no worker; median wall time of {runs} runs")
        for command in (["status", "--json"], ["queues", "--json"]):
            argv = [sys.executable, "-m", "celeryctl", *command]
            for env, source in ((api_env, "api"), (ctl_env, "rabbitmqctl")):
                out = subprocess.run(argv, capture_output=True, env=env, cwd=tmp, text=True)  # warm, and check
                if f'"{source}"' not in out.stdout:
                    print(f"{' '.join(command)} did not list through {source}:\n{out.stdout}{out.stderr}")
                    return 1
            a, a_rc = median_wall(argv, api_env, runs, tmp)
            c, c_rc = median_wall(argv, ctl_env, runs, tmp)
            name = f"celeryctl {' '.join(command)}"
            print(f"{name:<30} via api          {a:5.2f} s  exit {a_rc}")
            print(f"{name:<30} via rabbitmqctl  {c:5.2f} s  exit {c_rc}  api/rabbitmqctl {a / c:4.2f}")
        return 0
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
