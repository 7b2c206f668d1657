"""celeryctl's private RabbitMQ node.

A node lives in one directory (``<data dir>/node``) that holds everything it owns::

    home/.erlang.cookie   its own Erlang cookie (HOME points here for server and rabbitmqctl)
    mnesia/  log/         data and logs
    rabbitmq.conf         listeners on 127.0.0.1 only, management port when enabled
    enabled_plugins       [] or [rabbitmq_management].
    node.pid  state.json  the OS pid, and the ports/name chosen at start

It runs its own epmd on a private port, so two nodes never share anything and ``stop``
leaves no process behind.  Ports are kept below 32768: the ephemeral range (32768-60999)
gave ``eaddrinuse`` on these machines.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import string
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from celeryctl import validate
from celeryctl.broker import DEFAULT_PORT, MANAGEMENT_PORT, build_amqp_url
from celeryctl.errors import CeleryctlError, ConfigError, NodeError, NotInstalledError, TimeoutError_, UnreachableError
from celeryctl.files import private_dir, write_file
from celeryctl.probe import amqp_handshake, port_is_free
from celeryctl.rabbitmq.ctl import BIN_DIR_ENV, Runner, installed_version, require_bin_dir, run_program

MIN_PORT = 1024  # below it only root may listen, and the node needs no root
MAX_PORT = 32767  # the ephemeral range (32768-60999) gave ``eaddrinuse``
DIST_OFFSET = 20000  # distribution on port+20000 and the node's epmd next to it, when below MAX_PORT
EPMD_OFFSET = 100
HOST = "127.0.0.1"
DETACH_TIMEOUT = 60.0  # seconds for ``rabbitmq-server -detached`` to hand the node over and exit
CLUSTER_FILE = "cluster.json"  # beside the node directories: the members of a local cluster


@dataclass
class NodeInfo:
    name: str
    port: int
    dist_port: int
    epmd_port: int
    pid: int | None
    management_port: int | None = None
    version: str | None = None
    started_at: float | None = None

    @property
    def url(self) -> str:
        # "%2F" (not "//") so that pika and kombu both read vhost "/"
        return build_amqp_url("guest", "guest", HOST, self.port, "/")

    @property
    def management_url(self) -> str | None:
        return f"http://{HOST}:{self.management_port}/" if self.management_port else None


@dataclass
class NodeStatus:
    running: bool
    data_dir: str
    info: NodeInfo | None
    installed_version: str | None

    def to_dict(self) -> dict[str, Any]:
        info = asdict(self.info) if self.info else {}
        return {
            "running": self.running,
            "data_dir": self.data_dir,
            "name": info.get("name"),
            "pid": info.get("pid") if self.running else None,
            "port": info.get("port"),
            "dist_port": info.get("dist_port"),
            "epmd_port": info.get("epmd_port"),
            "management_port": info.get("management_port"),
            "url": self.info.url if self.info and self.running else None,
            "version": info.get("version") or self.installed_version,
        }


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        pass
    return True


def pick_free_port(preferred: list[int], avoid: set[int]) -> int:
    """First free port from ``preferred``, else any free one below 32768."""
    for port in preferred:
        if MIN_PORT <= port <= MAX_PORT and port not in avoid and port_is_free(port):
            return port
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randint(10000, MAX_PORT)
        if port not in avoid and port_is_free(port):
            return port
    raise NodeError("no free port found below 32768", "free some ports or pass --port")


class Node:
    """A private RabbitMQ node in ``directory``."""

    def __init__(self, directory: Path, bin_dir: Path | None = None) -> None:
        self.dir = Path(directory)
        self._bin_dir = bin_dir

    # ----------------------------------------------------------------- paths and environment
    @property
    def home(self) -> Path:
        return self.dir / "home"

    @property
    def log_dir(self) -> Path:
        return self.dir / "log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "node.pid"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = require_bin_dir()
        elif not (self._bin_dir / "rabbitmqctl").exists():  # a pinned directory (the rabbitmq_bin_dir setting)
            self._bin_dir = require_bin_dir({BIN_DIR_ENV: str(self._bin_dir)})
        return self._bin_dir

    def env(self, info: NodeInfo) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": info.name,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(info.port),
            "RABBITMQ_DIST_PORT": str(info.dist_port),
            "ERL_EPMD_PORT": str(info.epmd_port),
            "ERL_EPMD_ADDRESS": HOST,
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.log_dir),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_ALLOW_INPUT": "",
            # A VM that fails to boot (a port taken) writes its crash dump here, not into the cwd.
            "ERL_CRASH_DUMP": str(self.log_dir / "erl_crash.dump"),
        }

    def runner(self, info: NodeInfo | None = None, timeout: float = 60.0) -> Runner:
        """A rabbitmqctl runner aimed at this node (it must have been started once)."""
        info = info or self.read_state()
        if info is None:
            raise UnreachableError(
                f"celeryctl's node in {self.dir} has never been started", "start it with: celeryctl broker start"
            )
        return Runner(bin_dir=self.bin_dir, node=info.name, env=self.env(info), timeout=timeout)

    # ----------------------------------------------------------------- state
    def read_state(self) -> NodeInfo | None:
        try:
            data = json.loads(self.state_file.read_text())
            return NodeInfo(**data)
        except (OSError, ValueError, TypeError):
            return None

    def _write_state(self, info: NodeInfo) -> None:
        write_file(self.state_file, json.dumps(asdict(info), indent=2) + "\n")

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def running_info(self) -> NodeInfo | None:
        """The node's info when its process is alive (cheap: no Erlang VM, no network)."""
        info = self.read_state()
        if info is None:
            return None
        pid = self._read_pid() or info.pid
        if not pid_alive(pid):
            return None
        info.pid = pid
        return info

    def status(self) -> NodeStatus:
        info = self.running_info()
        if info is not None and not amqp_handshake(HOST, info.port, timeout=2.0).ok:
            running = pid_alive(info.pid)  # booting or stopping: the process is there
        else:
            running = info is not None
        try:
            version = installed_version(self.bin_dir)
        except NotInstalledError:  # status must work without an installation
            version = None
        return NodeStatus(running, str(self.dir), info or self.read_state(), version)

    # ----------------------------------------------------------------- start / stop
    def _prepare(self, info: NodeInfo, management: bool) -> None:
        # The data directory holds the demo's log and the node's cookie: its owner's only.
        try:
            for d in (self.dir.parent, self.dir, self.home, self.log_dir, self.dir / "mnesia"):
                private_dir(d)
        except ConfigError as exc:  # not a directory, no room: a permission problem keeps its exit 5
            raise NodeError(
                f"cannot use {self.dir} for the node ({exc.message})",
                "choose another directory with --data-dir (or CELERYCTL_DATA_DIR)",
            ) from None
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            write_file(cookie, "".join(secrets.choice(string.ascii_uppercase) for _ in range(32)), mode=0o400)
        conf = [
            f"listeners.tcp.default = {HOST}:{info.port}",
            "loopback_users.guest = true",
            "log.file.level = info",
            "log.console = false",
        ]
        if management and info.management_port:
            conf += [f"management.tcp.port = {info.management_port}", f"management.tcp.ip = {HOST}"]
        write_file(self.dir / "rabbitmq.conf", "\n".join(conf) + "\n")
        write_file(self.dir / "enabled_plugins", "[rabbitmq_management].\n" if management else "[].\n")
        write_file(self.dir / "rabbitmq-env.conf", "# celeryctl: settings come from the environment\n")
        write_file(self.dir / "advanced.config", "[].\n")

    def start(
        self,
        port: int | None = None,
        *,
        management: bool = False,
        dist_port: int | None = None,
        epmd_port: int | None = None,
        management_port: int | None = None,
        timeout: float = 90.0,
        on_progress: Callable[[str], None] | None = None,
    ) -> tuple[NodeInfo, bool]:
        """Start the node and wait until AMQP answers. Returns (info, started_now)."""
        say = on_progress or (lambda _msg: None)
        current = self.running_info()
        if current is not None:
            self._check_running_matches(current, port, management)
            return current, False
        bin_dir = self.bin_dir
        previous = self.read_state()
        if port is None:
            port = previous.port if previous else DEFAULT_PORT
        port = validate.port(port, "the port", low=MIN_PORT, high=MAX_PORT)
        if not port_is_free(port):
            suggestion = pick_free_port([port + i for i in range(1, 50)], set())
            raise NodeError(
                f"port {port} on {HOST} is already in use (another RabbitMQ or program listens there)",
                f"start on another port: celeryctl broker start --port {suggestion}",
                details={"port": port, "suggested_port": suggestion},
            )
        used = {port}
        dist_port = dist_port or pick_free_port([port + DIST_OFFSET + i for i in range(3)], used)
        used.add(dist_port)
        epmd_port = epmd_port or pick_free_port([dist_port + EPMD_OFFSET, dist_port + EPMD_OFFSET + 1], used)
        used.add(epmd_port)
        if management:
            management_port = management_port or pick_free_port([MANAGEMENT_PORT, port + 10000], used)
        info = NodeInfo(
            name=f"celeryctl-{port}@localhost",
            port=port,
            dist_port=dist_port,
            epmd_port=epmd_port,
            pid=None,
            management_port=management_port if management else None,
            version=installed_version(bin_dir),
            started_at=time.time(),
        )
        self._prepare(info, management)
        self.pid_file.unlink(missing_ok=True)
        self._write_state(info)
        say(f"starting RabbitMQ node {info.name} on {HOST}:{port}")
        boot_log = self.log_dir / "boot.log"
        try:
            # The node's daemons inherit the launcher's streams: they go to a file, not to pipes.
            proc = run_program(
                [str(bin_dir / "rabbitmq-server"), "-detached"],
                env=self.env(info),
                timeout=DETACH_TIMEOUT,
                output=boot_log,
                timeout_hint=f"see the log: {boot_log}",
            )
        except TimeoutError_:
            self._kill_leftovers(info)
            raise
        if proc.returncode != 0:
            raise self._start_failed(info, f"rabbitmq-server exited with status {proc.returncode}")
        deadline = time.monotonic() + timeout
        seen_pid = False
        while time.monotonic() < deadline:
            pid = self._read_pid()
            if pid is not None:
                if not seen_pid:
                    say(f"node process {pid} is booting")
                    seen_pid = True
                if not pid_alive(pid):
                    raise self._start_failed(info, "the node process exited during boot")
                if amqp_handshake(HOST, port, timeout=1.0).ok:
                    info.pid = pid
                    self._write_state(info)
                    return info, True
            elif time.monotonic() > deadline - timeout + 30 and not self._beam_running(info):
                raise self._start_failed(info, "the node did not write its pid file")
            time.sleep(0.1)
        self._kill_leftovers(info)
        raise self._start_failed(info, f"AMQP did not answer on {HOST}:{port} within {timeout:.0f} s")

    def _check_running_matches(self, current: NodeInfo, port: int | None, management: bool) -> None:
        """A request the running node does not match is an error, not silently ignored."""
        if port is not None and port != current.port:
            raise NodeError(
                f"celeryctl's node already runs on port {current.port} (pid {current.pid}), not on {port}",
                f"stop it first: celeryctl broker stop, then celeryctl broker start --port {port}",
                details={"port": current.port, "requested_port": port},
            )
        if management and current.management_port is None:
            raise NodeError(
                f"celeryctl's node already runs (pid {current.pid}) without the management plugin",
                "stop it first: celeryctl broker stop, then celeryctl broker start --management",
            )

    def _beam_running(self, info: NodeInfo) -> bool:
        needle = f"-sname {info.name}".encode()
        for pid in _pids():
            try:
                if needle in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "):
                    return True
            except OSError:
                continue
        return False

    def log_tail(self, info: NodeInfo, lines: int = 15) -> tuple[Path, list[str]]:
        for path in (self.log_file(info.name), self.log_dir / "boot.log"):
            try:
                text = path.read_text(errors="replace").splitlines()
            except OSError:
                continue
            if text:
                return path, text[-lines:]
        return self.log_file(info.name), []

    def _start_failed(self, info: NodeInfo, why: str) -> NodeError:
        path, tail = self.log_tail(info)
        self._kill_leftovers(info)
        return NodeError(
            f"RabbitMQ node failed to start: {why}",
            f"see the log: {path}",
            details={"log": str(path), "log_tail": tail},
        )

    def stop(self, timeout: float = 60.0, on_progress: Callable[[str], None] | None = None) -> bool:
        """Stop the node and its epmd. Returns False when it was not running."""
        say = on_progress or (lambda _msg: None)
        info = self.read_state()
        if info is None:
            return False
        pid = self._read_pid() or info.pid
        was_running = pid_alive(pid)
        if was_running:
            say(f"stopping RabbitMQ node {info.name} (pid {pid})")
            try:
                self.runner(info, timeout=timeout).run("stop", str(self.pid_file), check=False)
            except CeleryctlError:  # not installed, epmd gone, refused, timed out: the signals below stop it
                pass
            self._wait_gone(pid, 10.0)
        self._kill_leftovers(info)
        self.pid_file.unlink(missing_ok=True)
        return was_running

    def _wait_gone(self, pid: int | None, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.05)
        return not pid_alive(pid)

    @property
    def shares_epmd(self) -> bool:
        """A member of a local cluster: the members share one epmd, which only the cluster stops."""
        return (self.dir.parent / CLUSTER_FILE).exists()

    def _owns(self, pid: int, info: NodeInfo, epmd: bool) -> bool:
        """Is ``pid`` one of this node's processes (beam, its children; its epmd when ``epmd``)?"""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            environ = Path(f"/proc/{pid}/environ").read_bytes() + b"\0"
        except OSError:
            return False
        if f"-sname {info.name} ".encode() in cmdline + b" ":
            return True
        if b"epmd" in cmdline:  # started by the first node of a cluster, it serves them all
            return epmd and f"ERL_EPMD_PORT={info.epmd_port}\0".encode() in environ
        return f"RABBITMQ_NODENAME={info.name}\0".encode() in environ and any(
            exe in cmdline for exe in (b"beam", b"erl_child_setup", b"inet_gethost", b"rabbit_disk_monitor")
        )

    def _kill_leftovers(self, info: NodeInfo, *, epmd: bool | None = None) -> None:
        """Signal every process of this node (beam, its children, its private epmd unless shared)."""
        with_epmd = not self.shares_epmd if epmd is None else epmd
        for sig in (signal.SIGTERM, signal.SIGKILL):
            victims = [p for p in _pids() if p != os.getpid() and self._owns(p, info, with_epmd) and pid_alive(p)]
            if not victims:
                return
            for pid in victims:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            for pid in victims:
                self._wait_gone(pid, 3.0)

    def processes(self, *, epmd: bool | None = None) -> list[int]:
        """Live pids that belong to this node (for tests and for ``status``)."""
        info = self.read_state()
        if info is None:
            return []
        with_epmd = not self.shares_epmd if epmd is None else epmd
        return [p for p in _pids() if self._owns(p, info, with_epmd) and pid_alive(p)]

    def stop_epmd(self) -> None:
        """Stop the epmd this node's port points at (a cluster's, once every member is stopped)."""
        info = self.read_state()
        if info is not None:
            self._kill_leftovers(info, epmd=True)


def _pids() -> list[int]:
    try:
        return [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
