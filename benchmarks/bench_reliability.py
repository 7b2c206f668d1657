#!/usr/bin/env python3
"""Benchmark: what quorum queues cost, and a soak of many tasks through one submit.

Everything runs on a private RabbitMQ node of its own (temp dir, free port), in one run:

* quorum cost: ``celeryctl submit add 1 2 --count N --wait`` against a running
  ``celeryctl worker -c 2``, once with ``--queue-type classic`` and once with the default quorum
  queue (delivery limit, dead-letter queue), each on a queue of its own; rounds alternate
  classic/quorum so that the machine's load falls on both alike.  Prints both rates and the ratio.
* soak: ``celeryctl submit add 1 2 --count N --wait --json`` (quorum) with two workers, for
  N = 10,000 and 50,000: lost = submitted - succeeded (zero expected), and the submit process's
  peak resident memory (``ru_maxrss`` of a wrapper's only child): flat in N and under 200 MB is
  the goal (a stream, not every result held).

Usage: python3 benchmarks/bench_reliability.py [--quick] [--count N] [--rounds R] [--soak N,N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from celeryctl.rabbitmq.node import Node, NodeInfo, pick_free_port  # noqa: E402

MEMORY_GOAL_MB = 200.0
#: Runs ``argv`` as its only child and writes the child's peak RSS (KiB) to a file.
PEAK_RSS = """
import resource, subprocess, sys
out, argv = sys.argv[1], sys.argv[2:]
with open(out + ".stdout", "wb") as stdout:
    code = subprocess.run(argv, stdout=stdout).returncode
with open(out, "w") as f:
    f.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


@contextmanager
def private_node() -> Iterator[tuple[Path, NodeInfo, dict[str, str]]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-reliability-"))
    node = Node(tmp / "data" / "node")
    info, _ = node.start(pick_free_port([], set()))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_"))}
    env.update(PYTHONPATH=str(REPO), CELERYCTL_BROKER_URL=info.url, CELERYCTL_DATA_DIR=str(tmp / "data"))
    try:
        yield tmp, info, env
    finally:
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def workers(tmp: Path, env: dict[str, str], queue: str, queue_type: str, count: int = 1) -> Iterator[None]:
    """``count`` ``celeryctl worker -c 2`` processes on ``queue``, ready when this yields."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    for i in range(count):
        log = tmp / f"worker-{queue}-{i}-{time.monotonic_ns()}.log"
        with open(log, "wb") as out:
            argv = [sys.executable, "-m", "celeryctl", "worker", "-c", "2", "-Q", queue, "--queue-type", queue_type,
                    "-n", f"{queue}{i}@%h", "-l", "INFO"]  # fmt: skip
            procs.append((subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp), log))
    try:
        deadline = time.monotonic() + 90
        for proc, log in procs:
            while " ready." not in log.read_text(errors="replace"):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("a worker did not start:\n" + log.read_text(errors="replace"))
                time.sleep(0.1)
        yield
    finally:
        for proc, _log in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _log in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def submit(tmp: Path, env: dict[str, str], count: int, queue: str, queue_type: str) -> dict[str, Any]:
    """One ``submit add 1 2 --count N --wait --json``: its document, wall seconds and peak RSS (MB)."""
    peak = tmp / f"peak-{time.monotonic_ns()}"
    argv = [sys.executable, "-c", PEAK_RSS, str(peak), sys.executable, "-m", "celeryctl", "submit", "add", "1", "2",
            "--count", str(count), "--wait", "--json", "--queue", queue, "--queue-type", queue_type]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(argv, stderr=subprocess.PIPE, env=env, cwd=tmp, timeout=1800)
    wall = time.perf_counter() - t0
    text = Path(str(peak) + ".stdout").read_text()
    try:
        doc = json.loads(text)
    except ValueError:
        raise RuntimeError(f"submit printed no JSON (exit {proc.returncode}):\n{text}\n{proc.stderr.decode()}") from None
    doc.update(exit=proc.returncode, wall=wall, peak_mb=int(peak.read_text()) / 1024)
    return doc


def quorum_cost(tmp: Path, env: dict[str, str], count: int, rounds: int) -> None:
    rates: dict[str, list[float]] = {"classic": [], "quorum": []}
    with workers(tmp, env, "bench_classic", "classic"), workers(tmp, env, "bench_quorum", "quorum"):
        for queue_type in ("classic", "quorum"):  # warm-up: imports, queue declaration
            submit(tmp, env, 100, f"bench_{queue_type}", queue_type)
        for _ in range(rounds):
            for queue_type in ("classic", "quorum"):
                doc = submit(tmp, env, count, f"bench_{queue_type}", queue_type)
                if doc["succeeded"] != count:
                    raise RuntimeError(f"{queue_type}: {doc}")
                rates[queue_type].append(count / doc["wall"])
    classic, quorum = (sorted(rates[t])[len(rates[t]) // 2] for t in ("classic", "quorum"))
    print(f"submit add 1 2 --count {count} --wait, one worker -c 2 per queue, median of {rounds} rounds (whole process):")
    print(f"  classic queue  {classic:7.0f} tasks/s   ({', '.join(f'{r:.0f}' for r in rates['classic'])})")
    print(f"  quorum queue   {quorum:7.0f} tasks/s   ({', '.join(f'{r:.0f}' for r in rates['quorum'])})")
    print(f"  quorum / classic = {quorum / classic:.2f}  (quorum costs {max(0.0, 1 - quorum / classic) * 100:.0f}% of the rate)")


def soak(tmp: Path, env: dict[str, str], sizes: list[int]) -> None:
    print("soak: submit add 1 2 --count N --wait --json on a quorum queue, two workers -c 2:")
    peaks: list[float] = []
    with workers(tmp, env, "bench_soak", "quorum", count=2):
        submit(tmp, env, 100, "bench_soak", "quorum")
        for n in sizes:
            doc = submit(tmp, env, n, "bench_soak", "quorum")
            lost = doc["submitted"] - doc["succeeded"]
            peaks.append(doc["peak_mb"])
            print(
                f"  N={n:>6}: submitted {doc['submitted']}, succeeded {doc['succeeded']}, failed {doc['failed']}, "
                f"lost {lost}; {doc['wall']:.1f} s ({n / doc['wall']:.0f}/s); peak RSS of submit {doc['peak_mb']:.1f} MB"
            )
    growth = peaks[-1] - peaks[0]
    per_task = growth * 1024 * 1024 / max(1, sizes[-1] - sizes[0])
    # Flat: a million tasks would add less than 256 MB (what a stream costs, not a record per task).
    flat = peaks[-1] < MEMORY_GOAL_MB and per_task < 256
    print(
        f"  peak memory {peaks[0]:.1f} -> {peaks[-1]:.1f} MB (+{growth:.1f} MB, {per_task:.0f} bytes per extra task): "
        f"{'FLAT' if flat else 'GROWS WITH N'}; goal < {MEMORY_GOAL_MB:.0f} MB "
        f"{'PASS' if peaks[-1] < MEMORY_GOAL_MB else 'MISS'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: 1,000 tasks, soak 2,000 and 5,000")
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--soak", default="10000,50000")
    args = parser.parse_args()
    count, rounds, sizes = args.count, args.rounds, [int(x) for x in args.soak.split(",")]
    if args.quick:
        count, rounds, sizes = 1000, 1, [2000, 5000]
    with private_node() as (tmp, info, env):
        print(f"RabbitMQ {info.version} on port {info.port}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        quorum_cost(tmp, env, count, rounds)
        soak(tmp, env, sizes)
        print(f"load at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
