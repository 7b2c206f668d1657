#!/usr/bin/env python3
"""`celeryctl probe worker` vs `celery -A app inspect ping -d NAME`, idle and busy, in one run.

A private RabbitMQ node (temp dir, free port) and one real ``celeryctl worker -c 1 -n bench@%h
-A celeryctl.demo:app --health-port PORT`` (durable defaults: prefetch 1, late acks).  Each probe
is a whole process run the way an orchestrator execs it (the console scripts), timed for wall
time and CPU time (user + sys of the process, from ``wait4``); median of N runs, the probes taking
turns so that the machine's load falls on all alike:

* ``celeryctl probe worker NAME``          (liveness: reads the health record)
* ``celeryctl probe worker NAME --ready``  (readiness: also connected and consuming)
* ``celeryctl probe worker --file PATH``   (the record named: no settings to resolve)
* ``celery -A celeryctl.demo:app inspect ping -d NAME``  (the anchor: a broker round trip,
  Celery's default timeout of 1 s)
* ``curl -sf http://127.0.0.1:PORT/readyz`` (the worker's --health-port; in-process urllib
  when there is no curl)

once with the worker idle, and once busy: its only process runs ``sleep 600`` (submitted, then
the health record shows 1 active).  Prints the table, what each probe answered, the ratios
inspect ping / probe worker, and ``celeryctl --help`` and ``python -c pass`` (the floor of any
Python probe) measured in the same run for reference.  ``--pool solo`` runs the same with a solo
worker, whose only thread runs the task: its event loop stops, and so does the heartbeat.

Usage: python3 benchmarks/bench_probe.py [--quick] [--runs N] [--pool solo]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import FrameType

from _common import REPO, Measured, run_measured, stop_worker

from celeryctl.rabbitmq.node import Node, NodeInfo, pick_free_port

APP = "celeryctl.demo:app"
BUSY_SECONDS = 600  # longer than any busy phase: the task still runs when the phase ends


@dataclass
class Bench:
    tmp: Path
    info: NodeInfo
    node: str  # bench@host
    record: Path  # the worker's health record
    port: int  # its --health-port
    ctl_env: dict[str, str]  # celeryctl's settings (CELERYCTL_*)
    celery_env: dict[str, str]  # the celery CLI's (CELERY_BROKER_URL)
    worker_log: Path
    pool: str


def console_script(name: str) -> list[str]:
    """The console script next to this interpreter (what an orchestrator execs), else ``-m``."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    return [found] if found else [sys.executable, "-m", name]


CELERYCTL = console_script("celeryctl")
CELERY = console_script("celery")


def record_of(bench: Bench) -> dict[str, object]:
    try:
        doc = json.loads(bench.record.read_bytes())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def wait_until(
    what: str, done: Callable[[], bool], bench: Bench, worker: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline or worker.poll() is not None:
            log = bench.worker_log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{what}: not within {timeout:.0f} s (worker exit {worker.poll()}):\n{log}")
        time.sleep(0.2)


@contextmanager
def node_and_worker(pool: str) -> Iterator[tuple[Bench, subprocess.Popen[bytes]]]:
    """The node and a ``celeryctl worker -c 1``, ready (``probe worker --ready`` passes) when this
    yields; the worker stopped (SIGTERM), the node stopped and the directory removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-probe-"))
    node = Node(tmp / "data" / "node")
    worker: subprocess.Popen[bytes] | None = None
    try:
        info, _ = node.start(pick_free_port([], set()))
        port = pick_free_port([], {info.port})
        base = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_"))}
        base["PYTHONPATH"] = str(REPO)
        ctl_env = {**base, "CELERYCTL_BROKER_URL": info.url, "CELERYCTL_DATA_DIR": str(tmp / "data")}
        celery_env = {**base, "CELERY_BROKER_URL": info.url, "CELERY_RESULT_BACKEND": "rpc://"}
        name = f"bench@{socket.gethostname()}"
        bench = Bench(tmp, info, name, tmp / "data" / "health" / f"{name}.json", port, ctl_env, celery_env,
                      tmp / "worker.log", pool)  # fmt: skip
        with open(bench.worker_log, "wb") as out:
            # A session of its own: Ctrl-C reaches this script, which then stops the worker itself.
            worker = subprocess.Popen(
                [*CELERYCTL, "worker", "-A", APP, "-c", "1", "-P", pool, "-n", "bench@%h", "--health-port", str(port),
                 "--grace", "1", "-l", "INFO"],
                stdout=out, stderr=subprocess.STDOUT, env=ctl_env, cwd=tmp, start_new_session=True,
            )  # fmt: skip
        ready = [*CELERYCTL, "probe", "worker", name, "--ready"]
        wait_until("probe worker --ready", lambda: run_measured(ready, ctl_env, tmp).code == 0, bench, worker, 90)
        yield bench, worker
    finally:
        if worker is not None:
            stop_worker(worker)
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def get_readyz(port: int) -> Measured:
    """``GET /readyz`` in this process (when there is no curl): CPU is this process's."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            code, body = 0, resp.read()
    except urllib.error.HTTPError as exc:
        code, body = 22, exc.read()  # curl -f's exit code for an HTTP error
    except OSError as exc:
        code, body = 7, str(exc).encode()
    return Measured(time.perf_counter() - t0, time.process_time() - c0, code, body.decode(errors="replace"))


def probes(bench: Bench) -> dict[str, tuple[list[str] | None, dict[str, str]]]:
    """Label -> (argv, env); argv None is the in-process HTTP GET."""
    curl = shutil.which("curl")
    url = f"http://127.0.0.1:{bench.port}/readyz"
    return {
        "celeryctl probe worker NAME": ([*CELERYCTL, "probe", "worker", bench.node], bench.ctl_env),
        "celeryctl probe worker NAME --ready": ([*CELERYCTL, "probe", "worker", bench.node, "--ready"], bench.ctl_env),
        "celeryctl probe worker --file PATH": (
            [*CELERYCTL, "probe", "worker", "--file", str(bench.record)],
            bench.ctl_env,
        ),
        "celery inspect ping -d NAME (anchor)": (
            [*CELERY, "-A", APP, "inspect", "ping", "-d", bench.node],
            bench.celery_env,
        ),
        ("curl -sf :PORT/readyz" if curl else "GET /readyz (urllib, in-process)"): (
            [curl, "-sf", url] if curl else None,
            bench.ctl_env,
        ),
    }


def measure(bench: Bench, runs: int) -> dict[str, list[Measured]]:
    """``runs`` runs of every probe, taking turns, after one warm-up run of each."""
    table = probes(bench)
    results: dict[str, list[Measured]] = {label: [] for label in table}
    for i in range(runs + 1):
        for label, (argv, env) in table.items():
            m = run_measured(argv, env, bench.tmp) if argv is not None else get_readyz(bench.port)
            if i:  # the first round warms the page cache
                results[label].append(m)
    return results


def make_busy(bench: Bench, worker: subprocess.Popen[bytes]) -> str:
    """Submit a task that outlasts the busy phase; return once the record shows it active (or,
    for a pool that runs it on the event loop and so stops the record's updates, the log shows
    it received)."""
    done = run_measured([*CELERYCTL, "submit", "-A", APP, "sleep", str(BUSY_SECONDS)], bench.ctl_env, bench.tmp)
    if done.code != 0:
        raise RuntimeError(f"submit sleep {BUSY_SECONDS} failed (exit {done.code}):\n{done.output}")
    task = done.output.strip().splitlines()[-1]

    def running() -> bool:
        received = f"[{task}] received" in bench.worker_log.read_text(errors="replace")
        return record_of(bench).get("active") == 1 or (received and bench.pool == "solo")

    wait_until("the record shows 1 active", running, bench, worker, 60)
    return task


def first_lines(results: list[Measured]) -> list[str]:
    """The distinct answers (all lines joined; from JSON its ``line``; digits folded to #)."""
    seen: dict[str, int] = {}
    for m in results:
        text = m.output.strip()
        if text.startswith("{"):
            try:
                text = f"HTTP {'200' if m.code == 0 else 'error'} {json.loads(text)['line']}"
            except (ValueError, KeyError):
                pass
        line = " / ".join(ln.strip() for ln in text.splitlines() if ln.strip()) or "(no output)"
        key = f"exit {m.code}: " + "".join("#" if c.isdigit() else c for c in line)[:110]
        seen[key] = seen.get(key, 0) + 1
    return [f"{n}x {key}" for key, n in seen.items()]


def report(state: str, results: dict[str, list[Measured]]) -> dict[str, tuple[float, float]]:
    medians: dict[str, tuple[float, float]] = {}
    for label, runs in results.items():
        wall = statistics.median(m.wall for m in runs) * 1000
        cpu = statistics.median(m.cpu for m in runs) * 1000
        ok = sum(m.code == 0 for m in runs)
        medians[label] = (wall, cpu)
        print(f"{state:5} {label:40} {wall:9.1f} {cpu:8.1f} {ok:>5}/{len(runs)}")
    return medians


def answers(state: str, results: dict[str, list[Measured]]) -> None:
    print(f"what each probe answered ({state}):")
    for label, runs in results.items():
        for line in first_lines(runs):
            print(f"  {label:40} {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 runs of each (a smoke run)")
    parser.add_argument("--runs", type=int, default=20, help="runs of each probe per state (default 20)")
    parser.add_argument(
        "--pool", default="prefork", help="the worker's pool (default prefork; solo runs tasks in its loop)"
    )
    args = parser.parse_args()
    runs = 5 if args.quick else max(1, args.runs)

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # run the cleanup below

    signal.signal(signal.SIGTERM, stop)
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}; {runs} runs of each probe")
    try:
        with node_and_worker(args.pool) as (bench, worker):
            print(f"RabbitMQ {bench.info.version} on port {bench.info.port}; worker {bench.node} -c 1 -P {args.pool}, "
                  f"--health-port {bench.port}; Celery {version('celery')}; {CELERYCTL[-1]} / {CELERY[-1]}")  # fmt: skip
            idle = measure(bench, runs)
            task = make_busy(bench, worker)
            busy = measure(bench, runs)
            still = record_of(bench)
            helps = [run_measured([*CELERYCTL, "--help"], bench.ctl_env, bench.tmp) for _ in range(runs + 1)][1:]
            floor = [run_measured([sys.executable, "-c", "pass"], bench.ctl_env, bench.tmp) for _ in range(runs + 1)][
                1:
            ]
    except KeyboardInterrupt:
        print("interrupted: worker and node stopped", file=sys.stderr)
        return 130

    print(f"\n{'state':5} {'probe':40} {'wall ms':>9} {'CPU ms':>8} {'ok':>8}   (median of {runs})")
    m_idle = report("idle", idle)
    m_busy = report("busy", busy)
    print(f"busy: task {task} (sleep {BUSY_SECONDS}); the record after the busy phase: state "
          f"{still.get('state')}, active {still.get('active')}")  # fmt: skip
    print()
    answers("idle", idle)
    answers("busy", busy)
    probe, ping = "celeryctl probe worker NAME", "celery inspect ping -d NAME (anchor)"
    print()
    for state, m in (("idle", m_idle), ("busy", m_busy)):
        print(f"{state}: inspect ping / probe worker = {m[ping][0] / m[probe][0]:.1f}x wall, "
              f"{m[ping][1] / m[probe][1]:.1f}x CPU")  # fmt: skip
    help_wall = statistics.median(m.wall for m in helps) * 1000
    print(f"reference: celeryctl --help {help_wall:.1f} ms wall, "
          f"{statistics.median(m.cpu for m in helps) * 1000:.1f} ms CPU (median of {runs}, same run)")  # fmt: skip
    print(f"reference: {sys.executable} -c pass (the floor of any Python probe) "
          f"{statistics.median(m.wall for m in floor) * 1000:.1f} ms wall, "
          f"{statistics.median(m.cpu for m in floor) * 1000:.1f} ms CPU")  # fmt: skip
    print(f"load at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
