"""Security, checked: a broker password appears in no process's argv, log, file or output.

One distinctive random password goes through the whole life of a setup: ``setup-broker`` (from
stdin), a ``celeryctl worker``, ``flower``, ``submit --wait``, ``status --json``, ``doctor --json``
and failing commands under ``CELERYCTL_DEBUG=1`` (tracebacks printed).  While they run, a thread
reads ``/proc/*/cmdline`` of every process on the machine (ours, rabbitmqctl's Erlang VMs, the
worker and its pool, flower); afterwards the worker's and flower's logs, the node's log
directory, every file under the data directory and every captured stdout/stderr are read.
The password is in none of them; the one file meant to hold it (the settings file) is 0600, and
every directory under the data directory is 0700.

The listening sockets are ``tests/test_hardening_node.py``'s (loopback only): not repeated here.
Runs on the session node (nothing here kills it).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from tests.conftest import CELERYCTL_WORKER, CliResult, CliRun, RabbitNode, Workers, wait_for
from tests.test_hardening_node import _free_port_set, descendants, listeners


class CmdlineScanner:
    """Reads every process's ``/proc/PID/cmdline`` in a loop until stopped; remembers leaks."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.leaks: dict[int, str] = {}
        self.seen: set[str] = set()  # a short name of each command line seen
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CmdlineScanner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    raw = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue  # gone already
                text = raw.replace(b"\0", b" ").decode(errors="replace")
                if self.secret in raw:
                    self.leaks[int(entry)] = text
                for marker in ("rabbitmqctl", "celeryctl worker", "celeryctl flower", "flower", "celeryctl"):
                    if marker in text:
                        self.seen.add(marker)
                if "multiprocessing" in text or "celery" in text:
                    self.seen.add("celery")
            self.rounds += 1


def secret_files(root: Path, secret: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                if secret in path.read_bytes():
                    found.append(path)
            except OSError:
                continue
    return found


def start_flower(work: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``celeryctl flower`` from the project directory (its settings file), once it listens."""
    port = _free_port_set(1)[0]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celeryctl", "flower", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=work,
            env={k: v for k, v in os.environ.items() if not k.startswith("CELERYCTL_")} | env,
        )

    def listens() -> bool:
        assert proc.poll() is None, log.read_text(errors="replace")
        return any(p == port for _pid, _a, p in listeners(descendants(proc.pid)))

    try:
        wait_for(listens, timeout=60, interval=0.1, what="flower to listen")
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_the_password_is_nowhere(cli: CliRun, rabbit: RabbitNode, workers: Workers, tmp_path: Path) -> None:
    password = f"Pw{uuid.uuid4().hex}Zq"
    tag = uuid.uuid4().hex[:8]
    user, vhost = f"sec-{tag}", f"sec-{tag}"
    work = tmp_path / "project"
    work.mkdir()
    node_env = {"CELERYCTL_DATA_DIR": str(rabbit.data_dir)}
    outputs: list[CliResult] = []

    def run(*args: str, **kw: object) -> CliResult:
        env = {**node_env, **kw.pop("env", {})}  # type: ignore[dict-item]
        res = cli(*args, cwd=work, env=env, **kw)
        outputs.append(res)
        return res

    flower_log = tmp_path / "flower.log"
    flower: subprocess.Popen[bytes] | None = None
    with CmdlineScanner(password) as scan:
        try:
            setup = run(
                "setup-broker", "--user", user, "--vhost", vhost, "--password-stdin", "--json", input=password + "\n"
            )
            assert setup.returncode == 0, setup.output
            url = f"amqp://{user}:{password}@127.0.0.1:{rabbit.port}/{vhost}"
            worker = workers.start(CELERYCTL_WORKER, url, "-c", "2", "--loglevel", "DEBUG", cwd=work)
            flower = start_flower(work, node_env, flower_log)
            submitted = run("submit", "add", "1", "2", "--wait", "--timeout", "30")
            assert submitted.returncode == 0 and submitted.stdout.strip() == "3", submitted.output
            assert run("status", "--json").returncode == 0
            doctor = run("doctor", "--json", "--ping-timeout", "0.5")
            assert doctor.json()["checks"], doctor.output
            # Failures under CELERYCTL_DEBUG=1, tracebacks printed: the broker gone (the URL's
            # port closed), a refused login, a task that does not exist.
            debug = {"CELERYCTL_DEBUG": "1"}
            closed = f"amqp://{user}:{password}@127.0.0.1:{_free_port_set(1)[0]}/{vhost}"
            assert run("status", "--json", env=debug | {"CELERYCTL_BROKER_URL": closed}).returncode == 6
            wrong = f"amqp://{user}:{password}x@127.0.0.1:{rabbit.port}/{vhost}"
            assert run("submit", "add", "1", "2", env=debug | {"CELERYCTL_BROKER_URL": wrong}).returncode == 7
            assert run("submit", "nosuch.task", env=debug).returncode == 10
            assert worker.stop() == 0
        finally:
            if flower is not None:
                stop(flower)
            delete = run("setup-broker", "--delete", "--user", user, "--vhost", vhost, "--yes")
    assert delete.returncode == 0, delete.output
    # The scan ran while the commands did, and saw rabbitmqctl, the worker and flower.
    assert scan.rounds > 10
    assert {"rabbitmqctl", "celeryctl worker", "celeryctl flower"} <= scan.seen, scan.seen
    assert not scan.leaks, f"the password is in the argv of: {scan.leaks}"
    # Every output (stdout, stderr, --json, tracebacks) and every log.
    debug_tracebacks = [r for r in outputs if "Traceback" in r.stderr]
    assert debug_tracebacks, "CELERYCTL_DEBUG=1 printed no traceback: the scan proves nothing about them"
    for res in outputs:
        assert password not in res.output, f"{res.argv[3:]} printed the password:\n{res.output}"
    assert password not in worker.output, "the worker's log holds the password"
    assert password not in flower_log.read_text(errors="replace"), "flower's log holds the password"
    # Every file of the node (its logs included) and of the data dir; the project's files.
    in_data = secret_files(rabbit.data_dir, password.encode())
    assert not in_data, f"files under the data dir hold the password: {in_data}"
    holders = secret_files(work, password.encode())
    assert holders == [work / "celeryctl.toml"], holders  # the saved broker URL, on purpose
    for path in holders + in_data:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # (the settings file's directory is the user's project, not celeryctl's to restrict)


if not sys.platform.startswith("linux"):  # /proc
    pytestmark = pytest.mark.skip("needs /proc")
