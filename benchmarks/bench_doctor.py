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
import socket
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable

from _common import median_wall, node_with_demo_worker

from celeryctl.rabbitmq.node import pick_free_port

INTERNAL: dict[str, list[float]] = {}


def internal(label: str) -> Callable[[bytes], None]:
    """Collect the time doctor reports for its checks (``seconds`` in its JSON)."""

    def collect(stdout: bytes) -> None:
        if stdout.startswith(b"{"):
            INTERNAL.setdefault(label, []).append(json.loads(stdout)["seconds"])

    return collect


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
    silent = SilentServer()
    try:
        with node_with_demo_worker("bench-doctor-") as setup:
            tmp, info, base = setup.tmp, setup.info, setup.base_env
            doctor = [sys.executable, "-m", "celeryctl", "doctor", "--json"]
            status = [sys.executable, "-m", "celery", "-A", "celeryctl.demo:app", "status"]
            denv = {**base, "CELERYCTL_DATA_DIR": str(tmp / "data")}
            refused_url = f"amqp://guest:guest@127.0.0.1:{pick_free_port([], {info.port})}//"
            silent_url = f"amqp://guest:guest@127.0.0.1:{silent.port}//"
            subprocess.run(doctor, capture_output=True, env=denv, cwd=tmp)  # warm the page cache

            d_ok, d_ok_rc = median_wall(doctor, denv, runs, tmp, internal("healthy"))
            s_ok, s_ok_rc = median_wall(status, {**base, "CELERY_BROKER_URL": info.url}, runs, tmp)
            d_ref, _ = median_wall([*doctor, "--broker", refused_url], denv, runs, tmp, internal("refused"))
            s_ref, _ = median_wall(status, {**base, "CELERY_BROKER_URL": refused_url}, max(1, min(runs, 3)), tmp)
            d_sil, _ = median_wall(
                [*doctor, "--timeout", str(timeout), "--broker", silent_url], denv, runs, tmp, internal("never answers")
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


if __name__ == "__main__":
    raise SystemExit(main())
