"""What the benchmark scripts share: a private node with one worker of the demo app, timing."""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from celeryctl.rabbitmq.node import Node, NodeInfo, pick_free_port  # noqa: E402


@dataclass
class Setup:
    tmp: Path  # the working directory; tmp/data is CELERYCTL_DATA_DIR of the node
    info: NodeInfo
    base_env: dict[str, str]  # os.environ without CELERYCTL_*/CELERY_*, with the repo importable

    @property
    def data_dir(self) -> Path:
        return self.tmp / "data"


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM a worker started in its own session; SIGKILL its whole group (the pool too) after ``timeout``."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def node_with_demo_worker(prefix: str) -> Iterator[Setup]:
    """A private RabbitMQ node on a free port and one plain `celery worker` of celeryctl's demo
    app (-c 1, named bench@host), ready when this yields; both stopped afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
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
                raise RuntimeError("the worker did not start:\n" + worker_log.read_text(errors="replace"))
            time.sleep(0.1)
        yield Setup(tmp, info, base)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
        node.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def median_wall(
    argv: list[str],
    env: dict[str, str],
    runs: int,
    cwd: Path,
    on_output: Callable[[bytes], None] | None = None,
) -> tuple[float, int]:
    """Median wall time of ``runs`` whole processes, and the last exit code."""
    times, code = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, env=env, cwd=cwd, timeout=120)
        times.append(time.perf_counter() - t0)
        code = proc.returncode
        if on_output is not None:
            on_output(proc.stdout)
    return statistics.median(times), code


@dataclass
class Measured:
    """One whole process: wall seconds, CPU seconds (user + sys of it and the children it waited
    for, from ``wait4``), exit code and output (stdout and stderr together)."""

    wall: float
    cpu: float
    code: int
    output: str


def run_measured(argv: list[str], env: dict[str, str], cwd: Path) -> Measured:
    """Run ``argv`` to its end, timing its wall and CPU time."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    assert proc.stdout is not None
    try:
        output = proc.stdout.read()  # small: the pipe cannot fill before the end
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage, not the whole RUSAGE_CHILDREN
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()
    return Measured(wall, usage.ru_utime + usage.ru_stime, proc.returncode, output.decode(errors="replace"))
