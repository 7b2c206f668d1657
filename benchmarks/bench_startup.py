#!/usr/bin/env python3
"""`celeryctl --help` vs `celery --help`: median wall time over several runs, in one run.

Goal: celeryctl's median <= 0.40 x celery's (the CLI's import path must not load celery,
kombu or pika).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time


def median_wall(argv: list[str], runs: int) -> float:
    subprocess.run(argv, capture_output=True, check=True)  # warm the page cache
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 15
    celeryctl = shutil.which("celeryctl") or ""
    celery = shutil.which("celery") or ""
    ours = median_wall([celeryctl, "--help"] if celeryctl else [sys.executable, "-m", "celeryctl", "--help"], runs)
    anchor = median_wall([celery, "--help"] if celery else [sys.executable, "-m", "celery", "--help"], runs)
    ratio = ours / anchor
    print(f"celeryctl --help  median {ours * 1000:7.1f} ms  ({runs} runs)")
    print(f"celery --help     median {anchor * 1000:7.1f} ms  ({runs} runs)")
    print(f"ratio {ratio:.2f}  (goal <= 0.40)  {'PASS' if ratio <= 0.40 else 'MISS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
