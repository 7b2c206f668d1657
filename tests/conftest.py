"""The one test harness: every helper the test modules share is here, once.

* ``rabbit``: one real private RabbitMQ node per session, started through celeryctl's own node
  module on free ports below 32768 in a temp dir, and stopped at the end.  No test touches a
  system RabbitMQ on 5672.
* ``cli`` / ``isolated_env``: the real ``celeryctl`` in a subprocess, with no CELERYCTL_* leaking in.
* ``make_vhost``: vhosts (and users) on the session node, deleted after the module.
* ``workers`` / ``module_workers``: real worker subprocesses, ready when they answer a ping.
* ``terminal``: the real ``celeryctl`` on a pseudo-terminal.
* ``fake_bin``: executable stand-ins for RabbitMQ's programs.
* ``wait_for``: wait on a condition with a deadline (never sleep-and-hope).
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

from celeryctl.broker import build_amqp_url
from celeryctl.rabbitmq.ctl import Runner, find_bin_dir
from celeryctl.rabbitmq.node import DIST_OFFSET, EPMD_OFFSET, Node, NodeInfo, pick_free_port

REPO = Path(__file__).resolve().parent.parent


def _ensure_rabbitmq_installed() -> None:
    if find_bin_dir() is not None:
        return
    if os.geteuid() == 0:  # never skip: install it (as the README's test command does)
        subprocess.run([sys.executable, "-m", "celeryctl", "broker", "install"], check=True)
    if find_bin_dir() is None:
        pytest.exit("RabbitMQ is not installed and cannot be installed without root: run `celeryctl broker install`", 4)


@dataclass
class RabbitNode:
    node: Node
    info: NodeInfo
    data_dir: Path  # CELERYCTL_DATA_DIR that makes this node celeryctl's default

    @property
    def url(self) -> str:
        return self.info.url

    @property
    def port(self) -> int:
        return self.info.port

    @property
    def name(self) -> str:
        return self.info.name

    def runner(self) -> Runner:
        return self.node.runner(self.info)

    @property
    def management_url(self) -> str:
        """``http://127.0.0.1:PORT/`` (only on the ``mgmt_rabbit`` node)."""
        assert self.info.management_url, "this node runs without the management plugin: use mgmt_rabbit"
        return self.info.management_url

    @cached_property
    def version(self) -> str:
        """The RabbitMQ version the running node reports (asked through rabbitmq-diagnostics)."""
        return self.runner().run("-q", "server_version", tool="rabbitmq-diagnostics").stdout.strip()


class BackgroundStops:
    """Nodes and clusters stopped on threads, waited for (and their errors raised) at the end.

    A graceful stop takes 3-4 s a node and asserts nothing: the session's nodes stop side by
    side, and a module's own node while the next module runs.
    """

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def __call__(self, stop: Callable[[], object], what: str) -> None:
        def run() -> None:
            try:
                stop()
            except BaseException as exc:  # noqa: BLE001 - raised again by join()
                self.errors.append(exc)

        thread = threading.Thread(target=run, name=f"stop {what}")
        thread.start()
        self.threads.append(thread)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(180)
        stuck = [t.name for t in self.threads if t.is_alive()]
        self.threads.clear()
        assert not stuck, f"still stopping after 180 s: {stuck}"
        if self.errors:
            raise self.errors[0]


STOP_IN_BACKGROUND = BackgroundStops()


@pytest.fixture(scope="session", autouse=True)
def _background_stops() -> Iterator[BackgroundStops]:
    """Set up first, so torn down last: waits for every node stopped in the background."""
    try:
        yield STOP_IN_BACKGROUND
    finally:
        STOP_IN_BACKGROUND.join()


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A running private RabbitMQ node shared by the whole session."""
    _ensure_rabbitmq_installed()
    data_dir = tmp_path_factory.mktemp("celeryctl-data")
    node = Node(data_dir / "node")
    port = pick_free_port([], set())
    info, _ = node.start(port)
    try:
        yield RabbitNode(node, info, data_dir)
    finally:
        STOP_IN_BACKGROUND(node.stop, "the session node")


@pytest.fixture(scope="session")
def mgmt_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A second private node, with the management plugin (its HTTP API on a free port), shared
    by the tests of the API path.  guest (administrator, loopback) is its admin."""
    _ensure_rabbitmq_installed()
    data_dir = tmp_path_factory.mktemp("celeryctl-mgmt-data")
    node = Node(data_dir / "node")
    port = pick_free_port([], set())
    # a management port of its own: the default 15672 is the first choice of every other
    # management-enabled node (pytest-xdist runs two sessions side by side)
    info, _ = node.start(port, management=True, management_port=pick_free_port([port + 10000], {port, port + DIST_OFFSET, port + DIST_OFFSET + EPMD_OFFSET}))
    try:
        yield RabbitNode(node, info, data_dir)
    finally:
        STOP_IN_BACKGROUND(node.stop, "the management node")


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    argv: list[str]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> dict:  # type: ignore[type-arg]
        import json

        return json.loads(self.stdout)


CliRun = Callable[..., CliResult]


@pytest.fixture
def isolated_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no CELERYCTL_* leaking in, and a private data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYCTL_")}
    env["CELERYCTL_DATA_DIR"] = str(tmp_path / "data")
    env["COLUMNS"] = "200"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def cli(tmp_path: Path, isolated_env: dict[str, str]) -> CliRun:
    """Run the real ``celeryctl`` in a subprocess, from an empty working directory."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        input: str | None = None,
        cwd: Path | None = None,
        timeout: float = 120,
    ) -> CliResult:
        argv = [sys.executable, "-m", "celeryctl", *args]
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env={**isolated_env, **(env or {})},
            cwd=cwd or workdir,
            timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr, argv)

    return run


def wait_for(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> object:
    """Wait until ``condition()`` is truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def terminate(proc: subprocess.Popen[bytes], timeout: float = 15) -> str:
    """SIGTERM a long-running ``celeryctl`` process (flower), wait, SIGKILL it if it will not go;
    everything it printed (stdout with stderr folded in)."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=5)
    return (out or b"").decode(errors="replace")


# --------------------------------------------------------------------------- vhosts (and their users)


@dataclass
class Vhost:
    name: str
    port: int

    def url_for(self, user: str, password: str) -> str:
        return build_amqp_url(user, password, "127.0.0.1", self.port, self.name)

    @property
    def url(self) -> str:
        """guest's URL for this vhost (guest may only use it when created with ``guest=True``)."""
        return self.url_for("guest", "guest")


@dataclass
class BrokerUser:
    name: str
    password: str


def _erlang_binaries(names: list[str]) -> str:
    """Erlang binaries for ``names`` (UTF-8 bytes, any character), comma-separated, for ``rabbitmqctl eval``."""
    return ",".join("list_to_binary([" + ",".join(map(str, n.encode())) + "])" for n in names)


class VhostFactory:
    """Makes vhosts (and users) on the session node and deletes every one of them at teardown."""

    def __init__(self, rabbit: RabbitNode) -> None:
        self.rabbit = rabbit
        self.runner = rabbit.runner()
        self.vhosts: list[str] = []
        self.users: list[str] = []

    def __call__(self, prefix: str = "test", *, guest: bool = True) -> Vhost:
        """A fresh vhost named ``prefix-<random>``; with ``guest``, guest gets .* .* .* on it."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.vhosts.append(name)
        if guest:  # one Erlang VM (~0.5 s) for both: the functions add_vhost and set_permissions call
            any_ = '<<".*">>'
            self.runner.run(
                "eval",
                f"V = {_erlang_binaries([name])}, ok = rabbit_vhost:add(V, <<\"tests\">>), "
                f"ok = rabbit_auth_backend_internal:set_permissions(<<\"guest\">>, V, {any_}, {any_}, {any_}, "
                "<<\"tests\">>), ok.",
            )
        else:
            self.runner.run("add_vhost", "--", name)
        return Vhost(name, self.rabbit.port)

    def user(
        self, prefix: str = "user", *, vhost: Vhost | None = None, permissions: tuple[str, str, str] | None = None
    ) -> BrokerUser:
        """A fresh user with a random password; with ``vhost`` and ``permissions`` (configure, write, read) granted there."""
        user = BrokerUser(f"{prefix}-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex)
        self.users.append(user.name)
        self.runner.run("add_user", "--", user.name, stdin=user.password + "\n", secrets=[user.password])
        if permissions is not None:
            assert vhost is not None, "permissions need a vhost"
            self.runner.run("set_permissions", "-p", vhost.name, "--", user.name, *permissions)
        return user

    def cleanup(self) -> None:
        # One rabbitmqctl call (one Erlang VM, ~0.5 s) for every user and vhost, not one each: the
        # parallel calls of a module that made dozens took 5-20 s of its teardown.  A name already
        # deleted by its test is skipped (catch).
        code = (
            f"[catch rabbit_auth_backend_internal:delete_user(U, <<\"tests\">>) || U <- [{_erlang_binaries(self.users)}]], "
            f"[catch rabbit_vhost:delete(V, <<\"tests\">>) || V <- [{_erlang_binaries(self.vhosts)}]], ok."
        )
        if self.users or self.vhosts:
            self.runner.run("eval", code)
        left = {v["name"] for v in self.runner.json("list_vhosts", "name")} & set(self.vhosts)
        assert not left, f"vhosts left behind: {sorted(left)}"


@pytest.fixture(scope="module")
def make_vhost(rabbit: RabbitNode) -> Iterator[VhostFactory]:
    """``make_vhost(prefix) -> Vhost``: vhosts (and ``make_vhost.user(...)`` users) deleted after the module."""
    factory = VhostFactory(rabbit)
    try:
        yield factory
    finally:
        factory.cleanup()


# --------------------------------------------------------------------------- workers


CELERYCTL_WORKER = ("celeryctl", "worker")


def celery_worker(app: str) -> tuple[str, ...]:
    """The plain ``celery -A app worker`` command, for :class:`Worker`."""
    return ("celery", "-A", app, "worker")


class Worker:
    """A real worker subprocess (``python -m <command> -n <name> <args>``) with its output in ``log``.

    ``start`` returns once the worker answers a ping through Celery remote control on
    ``broker_url`` (it is connected and consuming), or fails with the log; ``stop`` sends a
    signal (SIGTERM: warm shutdown) and waits.  A stopped worker can be started again.
    """

    def __init__(
        self,
        command: Sequence[str],
        broker_url: str,
        log: Path,
        *args: str,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name or f"w{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
        self.argv = [sys.executable, "-m", *command, "-n", self.name, *args]
        self.broker_url, self.log, self.cwd = broker_url, log, cwd or log.parent
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_"))}
        self.env.update(PYTHONUNBUFFERED="1", COLUMNS="200", CELERYCTL_DATA_DIR=str(log.parent / "data"))
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._probe: Any = None

    @property
    def output(self) -> str:
        """Everything the worker printed (stdout and stderr), so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self, timeout: float = 60) -> Worker:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # its own process group: stop() can reach the pool's children
            )
        wait_for(self.answers_ping, timeout=timeout, interval=0.05, what=f"worker {self.name} to answer a ping")
        return self

    def answers_ping(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            pytest.fail(
                f"worker {self.name} is not running (exit {self.proc and self.proc.returncode}):\n{self.output}"
            )
        if self._probe is None:
            from celery import Celery

            self._probe = Celery("celeryctl-test-ping", broker=self.broker_url)
        # A ready worker answers in milliseconds; a short timeout is a fine-grained wait while it boots.
        replies = self._probe.control.ping(destination=[self.name], timeout=0.25) or []
        return any(self.name in reply for reply in replies)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Send ``sig`` (SIGKILL goes to the whole process group) and wait; the exit code."""
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode


class Workers:
    """Starts :class:`Worker` s with their logs in one directory and stops them all at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Worker] = []

    def start(
        self,
        command: Sequence[str],
        broker_url: str,
        *args: str,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
    ) -> Worker:
        worker = Worker(
            command, broker_url, self.log_dir / f"worker-{len(self.started)}.log", *args, name=name, env=env, cwd=cwd
        )
        self.started.append(worker)
        return worker.start(timeout)

    def stop_all(self) -> None:
        """SIGKILL every worker (its process group) and reap it: the teardown asserts nothing of
        a worker's exit, and a warm shutdown costs 3-4 s a worker (its whole grace while a task
        runs).  RabbitMQ re-queues what a killed worker held, as for any lost connection.  The
        warm shutdown is tested where it is the subject (``worker.stop()`` with SIGTERM)."""
        for worker in self.started:
            worker.stop(signal.SIGKILL)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    """Workers for one test (``workers.start(command, broker_url, *args, ...)``), stopped after it."""
    pool = Workers(tmp_path)
    try:
        yield pool
    finally:
        pool.stop_all()


@pytest.fixture(scope="module")
def module_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """The same for workers a whole module shares."""
    pool = Workers(tmp_path_factory.mktemp("workers"))
    try:
        yield pool
    finally:
        pool.stop_all()


# --------------------------------------------------------------------------- pseudo-terminals


class Terminal:
    """A process whose stdin, stdout and stderr are a pseudo-terminal; its screen read with deadlines."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: Path, size: tuple[int, int] = (50, 200)
    ) -> None:
        argv, env = list(argv), dict(env)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: only exec (or exit), nothing of pytest's may run here
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
                os.chdir(cwd)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.output = b""
        self.eof = False
        self.returncode: int | None = None

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def _read(self, seconds: float) -> None:
        if self.eof:
            time.sleep(min(seconds, 0.05))
            return
        ready, _, _ = select.select([self.fd], [], [], max(seconds, 0))
        if not ready:
            return
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: every end of the terminal's other side is closed
            chunk = b""
        if chunk:
            self.output += chunk
        else:
            self.eof = True

    def expect(self, *needles: str, timeout: float = 30) -> str:
        """Read until every one of ``needles`` is on the screen; fail (the screen shown) if not in time."""
        wanted = [n.encode() for n in needles]
        deadline = time.monotonic() + timeout
        while not all(n in self.output for n in wanted):
            if self.eof or time.monotonic() > deadline:
                why = "the terminal closed" if self.eof else f"{timeout} s passed"
                pytest.fail(f"{why} before {needles!r} appeared; the screen:\n{self.text[-3000:]}")
            self._read(min(0.1, deadline - time.monotonic()))
        return self.text

    def send(self, data: str) -> None:
        os.write(self.fd, data.encode())

    def wait(self, timeout: float = 30) -> int:
        """Read the rest of the screen until the process exits; its exit code (fails if not in time)."""
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                self.close()
                pytest.fail(f"still running after {timeout} s; the screen:\n{self.text[-3000:]}")
            self._read(0.1)
        while not self.eof:  # what it wrote just before exiting
            self._read(0.2)
            if not select.select([self.fd], [], [], 0)[0]:
                break
        return self.returncode

    def close(self) -> None:
        """Kill the process if it still runs, reap it, close the terminal."""
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


TerminalRun = Callable[..., Terminal]


@pytest.fixture
def terminal(tmp_path: Path, isolated_env: dict[str, str]) -> Iterator[TerminalRun]:
    """Run the real ``celeryctl`` on a pseudo-terminal (same environment and directory as ``cli``)."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    opened: list[Terminal] = []

    def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Terminal:
        term = Terminal([sys.executable, "-m", "celeryctl", *args], {**isolated_env, **(env or {})}, cwd or workdir)
        opened.append(term)
        return term

    try:
        yield run
    finally:
        for term in opened:
            term.close()


# --------------------------------------------------------------------------- fake programs


RABBITMQ_TOOLS = ("rabbitmq-server", "rabbitmqctl")


def fake_bin(directory: Path, scripts: str | Mapping[str, str], tools: Sequence[str] = RABBITMQ_TOOLS) -> Path:
    """Write executable ``/bin/sh`` scripts into ``directory``; the directory (for PATH or CELERYCTL_RABBITMQ_BIN_DIR).

    ``scripts`` is one body for every tool in ``tools``, or a body per tool name.
    """
    bodies = dict(scripts) if isinstance(scripts, Mapping) else dict.fromkeys(tools, scripts)
    directory.mkdir(parents=True, exist_ok=True)
    for tool, body in bodies.items():
        path = directory / tool
        path.write_text(f"#!/bin/sh\n{body}")
        path.chmod(0o755)
    return directory
