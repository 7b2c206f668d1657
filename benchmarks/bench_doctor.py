#!/usr/bin/env python3
"""`celeryctl doctor` vs `celery -A app status`: median wall time in one run, three situations.

Own RabbitMQ node (temp dir, free port) and one real worker of the demo app.  Goals:

* healthy, one worker: the whole doctor <= 1.5 s wall (``celery status`` alone ~1.5 s);
* connection refused: doctor's verdict <= 1.0 s (``celery status`` ~6.5 s);
* a port that accepts TCP and never answers: doctor <= --timeout + 0.5 s.

Usage: python3 benchmarks/bench_doctor.py [RUNS]   (default 5; the refused anchor runs 3 times)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from celeryctl.rabbitmq.node import Node, pick_free_port  # noqa: E402

INTERNAL: dict[str, list[float]] = {}


def median_wall(argv: list[str], env: dict[str, str], runs: int, cwd: Path, label: str = "") -> tuple[float, int]:
    times, code = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, env=env, cwd=cwd, timeout=120)
        times.append(time.perf_counter() - t0)
        code = proc.returncode
        if label and proc.stdout.startswith(b"{"):
            INTERNAL.setdefault(label, []).append(json.loads(proc.stdout)["seconds"])
    return statistics.median(times), code


class SilentServer:
    """Accepts TCP connections and never sends a byte (the AMQP handshake then times out)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        for s in self.held:
            s.close()
        self.sock.close()


def main() -> int:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    timeout = 2.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-doctor-"))
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
    silent = SilentServer()
    try:
        deadline = time.monotonic() + 60
        while " ready." not in worker_log.read_text(errors="replace"):
            if time.monotonic() > deadline or worker.poll() is not None:
                print(worker_log.read_text(errors="replace"))
                return 1
            time.sleep(0.1)
        doctor = [sys.executable, "-m", "celeryctl", "doctor", "--json"]
        status = [sys.executable, "-m", "celery", "-A", "celeryctl.demo:app", "status"]
        denv = {**base, "CELERYCTL_DATA_DIR": str(tmp / "data")}
        refused_url = f"amqp://guest:guest@127.0.0.1:{pick_free_port([], {info.port})}//"
        silent_url = f"amqp://guest:guest@127.0.0.1:{silent.port}//"
        subprocess.run(doctor, capture_output=True, env=denv, cwd=tmp)  # warm the page cache

        d_ok, d_ok_rc = median_wall(doctor, denv, runs, tmp, "healthy")
        s_ok, s_ok_rc = median_wall(status, {**base, "CELERY_BROKER_URL": info.url}, runs, tmp)
        d_ref, _ = median_wall([*doctor, "--broker", refused_url], denv, runs, tmp, "refused")
        s_ref, _ = median_wall(status, {**base, "CELERY_BROKER_URL": refused_url}, max(1, min(runs, 3)), tmp)
        d_sil, _ = median_wall(
            [*doctor, "--timeout", str(timeout), "--broker", silent_url], denv, runs, tmp, "never answers"
        )

        def line(label: str, ours: float, anchor: float | None, goal: float) -> None:
            verdict = "PASS" if ours <= goal else "MISS"
            a = f"anchor {anchor:6.2f} s  ratio {ours / anchor:5.2f}" if anchor else "anchor      -"
            print(f"{label:<34} doctor {ours:5.2f} s  {a}  goal <= {goal:.1f} s  {verdict}")

        load = os.getloadavg()[0]
        print(f"RabbitMQ {info.version} on port {info.port}, one worker; median of {runs} runs; load {load:.1f}")
        line(f"healthy (doctor exit {d_ok_rc}, status {s_ok_rc})", d_ok, s_ok, 1.5)
        line("connection refused", d_ref, s_ref, 1.0)
        line(f"never answers (--timeout {timeout:g})", d_sil, None, timeout + 0.5)
        inside = ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in INTERNAL.items())
        print(f"time inside the checks (the rest is process start and exit): {inside}")
        return 0
    finally:
        silent.close()
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
        node.stop()


if __name__ == "__main__":
    raise SystemExit(main())
