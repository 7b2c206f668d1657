#!/usr/bin/env python3
"""Bad input: how fast celeryctl says what is wrong, against what the anchors do with the same input.

In one run, median wall time of whole processes:

* a flag that is not a finite number (`submit add 1 2 --wait --timeout nan`): celeryctl's usage
  error against `celery --help` (the cost of merely starting Celery's CLI; goal <= 0.5 x: the error
  comes before celery is imported; typer >= 0.2x imports pydantic, ~65 ms, for every command it
  runs, which `celeryctl --help` does not pay);
* arguments that do not fit the task (`submit add`): celeryctl's usage error against
  `celery -A celeryctl.demo:app call celeryctl.demo.add` (which does not check them: it goes to
  the broker, here a closed port, and fails there with a traceback; goal <= 1.0 x);
* a rabbitmqctl node whose host does not resolve (`--node nosuch@nosuch-host`):
  `celeryctl setup-broker --dry-run` against `rabbitmqctl -n nosuch@nosuch-host list_users`
  (one run of each; the anchor is cut at 90 s; goal <= 0.1 x).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLOSED = "amqp://guest:guest@127.0.0.1:1//"  # nothing listens there: nothing can be published


def run(argv: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> tuple[float, int | None, str]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, env=env, cwd=cwd, timeout=timeout, text=True)
        code: int | None = proc.returncode
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        code, tail = None, f"(still running after {timeout:.0f} s)"
    return time.perf_counter() - t0, code, tail


def median(argv: list[str], env: dict[str, str], cwd: Path, runs: int) -> tuple[float, int | None, str]:
    run(argv, env, cwd)  # warm the page cache
    results = [run(argv, env, cwd) for _ in range(runs)]
    return statistics.median(r[0] for r in results), results[-1][1], results[-1][2]


def show(label: str, ours: tuple[float, int | None, str], anchor: tuple[float, int | None, str], goal: float) -> None:
    ratio = ours[0] / anchor[0]
    print(f"{label}")
    print(f"  celeryctl {ours[0] * 1000:8.0f} ms  exit {ours[1]}  {ours[2][:100]}")
    print(f"  anchor    {anchor[0] * 1000:8.0f} ms  exit {anchor[1]}  {anchor[2][:100]}")
    print(f"  ratio {ratio:.2f}  (goal <= {goal})  {'PASS' if ratio <= goal else 'MISS'}")


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_"))}
    env["PYTHONPATH"] = str(REPO)
    tmp = Path(tempfile.mkdtemp(prefix="bench-bad-"))
    env["CELERYCTL_DATA_DIR"] = str(tmp / "data")  # no private node here: setup-broker uses --node
    celeryctl = [shutil.which("celeryctl") or ""] if shutil.which("celeryctl") else [sys.executable, "-m", "celeryctl"]
    celery = [shutil.which("celery") or ""] if shutil.which("celery") else [sys.executable, "-m", "celery"]
    try:
        show(
            "non-finite --timeout (exit 2) vs celery --help",
            median([*celeryctl, "submit", "add", "1", "2", "--wait", "--timeout", "nan"], env, tmp, runs),
            median([*celery, "--help"], env, tmp, runs),
            0.5,
        )
        show(
            "arguments that do not fit the task (exit 2) vs celery call (TypeError traceback)",
            median([*celeryctl, "submit", "add", "--broker", CLOSED], env, tmp, runs),
            median([*celery, "-A", "celeryctl.demo:app", "-b", CLOSED, "call", "celeryctl.demo.add"], env, tmp, runs),
            1.0,
        )
        sys.path.insert(0, str(REPO))
        from celeryctl.rabbitmq.ctl import find_bin_dir

        bin_dir = find_bin_dir()
        if bin_dir is None:
            print("rabbitmqctl not installed: run `celeryctl broker install` for the third measurement")
            return 0
        node = "nosuch@nosuch-host"  # a host name that does not resolve
        show(
            f"a node whose host does not resolve ({node}), one run each",
            run([*celeryctl, "setup-broker", "--node", node, "--dry-run"], env, tmp),
            run([str(bin_dir / "rabbitmqctl"), "-n", node, "list_users"], {**env, "HOME": str(tmp)}, tmp, timeout=90),
            0.1,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
