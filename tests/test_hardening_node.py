"""Hardening of the private node and rabbitmqctl (issue 11).

* Every process celeryctl starts listens on loopback only: the node (with and without
  ``--management``), rabbitmqctl's own Erlang node, a worker, Flower.  The scan reads the
  kernel's listening sockets (``/proc/net/tcp*``, state 0A) and maps them to processes through
  ``/proc/PID/fd``.
* ``broker start`` checks ``--port`` and ``--timeout`` before anything runs, masks the URL, and
  refuses a ``--port`` / ``--management`` the running node does not have; a taken distribution
  or epmd port is replaced by a free one.  ``broker status`` of a stopped node is one line.
* Node names are checked before any call; a node that cannot exist fails in seconds (exit 6).
"""

from __future__ import annotations

import ipaddress
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from celeryctl.broker import MANAGEMENT_PORT
from celeryctl.errors import UnreachableError, UsageError
from celeryctl.probe import port_is_free
from celeryctl.rabbitmq.ctl import LOOPBACK_CTL_ERL_ARGS, Runner, find_bin_dir
from celeryctl.rabbitmq.node import DIST_OFFSET, EPMD_OFFSET, MAX_PORT, MIN_PORT, Node
from tests.conftest import CELERYCTL_WORKER, CliRun, RabbitNode, Workers, wait_for

# --------------------------------------------------------------------------- the socket scanner

Listener = tuple[int, str, int]  # pid, address, port


def _address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    # /proc/net/tcp6 prints the address as four host-order 32-bit words
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def listening_inodes() -> dict[int, tuple[str, int]]:
    """Every TCP socket in LISTEN state (0A) on this machine: inode -> (address, port)."""
    found: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] != "0A":
                continue
            addr, port = fields[1].split(":")
            found[int(fields[9])] = (_address(addr), int(port, 16))
    return found


def descendants(root: int) -> set[int]:
    """``root`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat_line.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def listeners(pids: Iterable[int]) -> set[Listener]:
    """The listening TCP sockets the processes ``pids`` hold."""
    table = listening_inodes()
    found: set[Listener] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in table:
                    found.add((pid, *table[inode]))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def assert_loopback_only(found: set[Listener], what: str) -> None:
    exposed = sorted(item for item in found if not is_loopback(item[1]))
    assert not exposed, f"{what} listens beyond loopback (pid, address, port): {exposed}"


def test_the_scanner_sees_a_socket_on_every_interface() -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        found = listeners([os.getpid()])
    assert (os.getpid(), "0.0.0.0", port) in found
    with pytest.raises(AssertionError, match="beyond loopback"):
        assert_loopback_only(found, "the scanner's own socket")


# --------------------------------------------------------------------------- loopback only


def test_the_session_node_listens_on_loopback_only(rabbit: RabbitNode) -> None:
    """The node as ``broker start`` starts it (no management): AMQP, distribution, epmd."""
    found = listeners(rabbit.node.processes())
    ports = {port for _pid, _addr, port in found}
    assert {rabbit.info.port, rabbit.info.dist_port, rabbit.info.epmd_port} <= ports, found
    assert_loopback_only(found, "celeryctl's node")


def test_rabbitmqctl_own_erlang_node_listens_on_loopback_only(rabbit: RabbitNode) -> None:
    runner = rabbit.runner()
    seen: set[Listener] = set()
    outcome: list[object] = []

    def call() -> None:
        # eval keeps the CLI's Erlang node alive (and listening) long enough to be seen
        try:
            outcome.append(runner.run("eval", "timer:sleep(3000)."))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome.append(exc)

    before = listeners(descendants(os.getpid()))
    thread = threading.Thread(target=call)
    thread.start()

    def saw_the_cli_node() -> bool:
        seen.update(listeners(descendants(os.getpid())) - before)
        return bool(seen) or not thread.is_alive()

    wait_for(saw_the_cli_node, timeout=60, interval=0.02, what="rabbitmqctl's Erlang node to listen")
    thread.join(60)
    assert outcome and not isinstance(outcome[0], Exception), outcome
    assert seen, "rabbitmqctl's Erlang node was never seen listening"
    assert_loopback_only(seen, "rabbitmqctl's Erlang node")


def test_runner_env_keeps_the_users_own_ctl_erl_args(rabbit: RabbitNode) -> None:
    runner = rabbit.runner()
    runner.env = {**runner.env, "RABBITMQ_CTL_ERL_ARGS": "+S 1"}
    assert runner._env()["RABBITMQ_CTL_ERL_ARGS"] == f"{LOOPBACK_CTL_ERL_ARGS} +S 1"
    assert runner.run("eval", "ok.").stdout.strip() == "ok"


def test_a_worker_listens_on_loopback_only(rabbit: RabbitNode, workers: Workers) -> None:
    worker = workers.start(CELERYCTL_WORKER, rabbit.url, "-c", "2", "--broker", rabbit.url)
    assert worker.proc is not None
    assert_loopback_only(listeners(descendants(worker.proc.pid)), "celeryctl worker")


def test_flower_listens_on_loopback_only(rabbit: RabbitNode, tmp_path: Path, isolated_env: dict[str, str]) -> None:
    pytest.importorskip("flower")
    port = _free_port_set(1)[0]
    log = tmp_path / "flower.log"
    argv = [sys.executable, "-m", "celeryctl", "flower", "--port", str(port), "--broker", rabbit.url]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=isolated_env, cwd=tmp_path
        )
    try:
        tree: set[Listener] = set()

        def flower_listens() -> bool:
            assert proc.poll() is None, f"flower exited {proc.returncode}:\n{log.read_text(errors='replace')}"
            tree.update(listeners(descendants(proc.pid)))
            return any(p == port for _pid, _addr, p in tree)

        wait_for(flower_listens, timeout=60, interval=0.1, what="flower to listen")
        assert_loopback_only(tree, "celeryctl flower")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# --------------------------------------------------------------------------- broker start


def _free_port_set(count: int, offsets: tuple[int, ...] = ()) -> list[int]:
    """``count`` free ports p (with p + each of ``offsets`` free too) in the node's range."""
    rng = random.Random()
    found: list[int] = []
    while len(found) < count:
        port = rng.randint(10000, MAX_PORT - max(offsets, default=0))
        if all(port_is_free(port + o) for o in (0, *offsets)) and port not in found:
            found.append(port)
    return found


@contextmanager
def stopped_afterwards(data_dir: Path) -> Iterator[None]:
    """Stop whatever node a test started in ``data_dir`` (when the check under test let it start)."""
    try:
        yield
    finally:
        if (data_dir / "node" / "state.json").exists():
            Node(data_dir / "node").stop()


@contextmanager
def listening_on(ports: Iterable[int]) -> Iterator[None]:
    with ExitStack() as stack:
        for port in ports:
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", port))
            s.listen()
        yield


@contextmanager
def holding(port: int) -> Iterator[None]:
    """Listen on ``port`` if it is free; if something else holds it, it is taken just the same."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            pass
        yield


def test_broker_start_with_management_takes_free_ports_and_listens_on_loopback_only(
    cli: CliRun, tmp_path: Path
) -> None:
    """Its usual distribution and epmd ports taken, the node picks free ones; every socket is on loopback."""
    taken_dist = DIST_OFFSET
    dist = DIST_OFFSET + 1
    taken_epmd = (dist + EPMD_OFFSET, dist + EPMD_OFFSET + 1)
    (port,) = _free_port_set(1, (taken_dist, dist, *taken_epmd, 10000))
    env = {"CELERYCTL_DATA_DIR": str(tmp_path / "d")}
    node = Node(tmp_path / "d" / "node")
    try:
        # 15672 taken too (by us, or already by another node of a parallel session): the
        # management port falls back as well, and no other node can race this one for it
        with listening_on([port + taken_dist, *(port + t for t in taken_epmd)]), holding(MANAGEMENT_PORT):
            r = cli("broker", "start", "--port", str(port), "--management", "--json", env=env)
        assert r.returncode == 0, r.output
        doc = r.json()
        assert doc["url"] == f"amqp://guest:****@127.0.0.1:{port}/%2F"
        status = cli("broker", "status", "--json", env=env).json()
        assert status["port"] == port and status["dist_port"] == port + dist
        assert status["epmd_port"] not in {port + t for t in taken_epmd}
        assert status["management_port"] != MANAGEMENT_PORT
        assert status["url"] == doc["url"]

        found = listeners(node.processes())
        ports = {p for _pid, _addr, p in found}
        assert {port, status["dist_port"], status["epmd_port"], status["management_port"]} <= ports, found
        assert_loopback_only(found, "celeryctl's node with --management")

        # what it runs with is what it is asked: the same request is fine, another is an error
        again = cli("broker", "start", "--port", str(port), "--management", env=env)
        assert again.returncode == 0 and "already running" in again.stderr
        other = cli("broker", "start", "--port", str(port + 1), env=env)
        assert other.returncode == 9
        assert f"already runs on port {port}" in other.stderr and "celeryctl broker stop" in other.stderr
    finally:
        node.stop()
    assert node.processes() == []


def test_broker_start_on_the_running_node(cli: CliRun, rabbit: RabbitNode) -> None:
    env = {"CELERYCTL_DATA_DIR": str(rabbit.data_dir)}
    masked = f"amqp://guest:****@127.0.0.1:{rabbit.port}/%2F"

    r = cli("broker", "start", env=env)
    assert r.returncode == 0 and r.stdout.strip() == masked
    r = cli("broker", "start", "--json", env=env)
    assert r.returncode == 0 and r.json()["url"] == masked
    assert "guest:guest" not in r.output

    r = cli("broker", "status", "--json", env=env)
    assert r.returncode == 0 and r.json()["url"] == masked
    r = cli("broker", "status", env=env)
    assert r.returncode == 0 and masked in r.stdout and "guest:guest" not in r.output

    other = rabbit.port + 1 if rabbit.port < MAX_PORT else rabbit.port - 1
    running = rabbit.node.running_info()
    assert running is not None
    r = cli("broker", "start", "--port", str(other), env=env)
    assert r.returncode == 9
    assert r.stderr.splitlines()[-2:] == [
        f"error: celeryctl's node already runs on port {rabbit.port} (pid {running.pid}), not on {other}",
        f"hint: stop it first: celeryctl broker stop, then celeryctl broker start --port {other}",
    ]
    r = cli("broker", "start", "--management", "--json", env=env)
    assert r.returncode == 9 and "without the management plugin" in r.json()["error"]["message"]
    assert rabbit.node.running_info() is not None


@pytest.mark.parametrize("port", ["40000", "65535", "65536", str(MIN_PORT - 1), "0", "-1", "abc", "5672.5"])
def test_broker_start_port_out_of_range_is_a_usage_error(cli: CliRun, tmp_path: Path, port: str) -> None:
    with stopped_afterwards(tmp_path / "d"):  # should it start after all (it did before), it is stopped
        r = cli("broker", "start", "--port", port, env={"CELERYCTL_DATA_DIR": str(tmp_path / "d")})
    assert r.returncode == 2, r.output
    assert f"{MIN_PORT} to {MAX_PORT}" in r.stderr
    assert "Traceback" not in r.output
    assert not (tmp_path / "d").exists()  # nothing was done


@pytest.mark.parametrize("timeout", ["nan", "inf", "-1", "0", "soon"])
def test_broker_start_timeout_must_be_a_finite_positive_number(cli: CliRun, tmp_path: Path, timeout: str) -> None:
    port = str(_free_port_set(1)[0])  # never the default 5672, even when the check is missing
    with stopped_afterwards(tmp_path / "d"):
        r = cli(
            "broker", "start", "--port", port, "--timeout", timeout, env={"CELERYCTL_DATA_DIR": str(tmp_path / "d")}
        )
    assert r.returncode == 2, r.output
    assert "--timeout" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "d").exists()


def test_broker_start_help_names_plain_placeholders_and_the_port_range(cli: CliRun) -> None:
    r = cli("broker", "start", "--help")
    assert r.returncode == 0
    assert "--port PORT" in r.stdout and "--timeout SECONDS" in r.stdout
    assert f"{MIN_PORT}-{MAX_PORT}" in r.stdout
    assert "INTEGER" not in r.stdout and "FLOAT" not in r.stdout and "<int>" not in r.stdout


# --------------------------------------------------------------------------- broker status, broker alone


def test_broker_status_of_a_stopped_node_is_one_line(cli: CliRun, tmp_path: Path) -> None:
    env = {"CELERYCTL_DATA_DIR": str(tmp_path / "d")}
    r = cli("broker", "status", env=env)
    assert r.returncode == 6
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        f"error: celeryctl's node in {tmp_path / 'd' / 'node'} is not running (it has never been started)",
        "hint: start it with: celeryctl broker start",
    ]
    r = cli("broker", "status", "--json", env=env)
    assert r.returncode == 6 and r.stderr == ""
    doc = r.json()  # exactly one document
    assert doc["ok"] is False
    assert doc["error"]["code"] == "unreachable" and doc["error"]["exit_code"] == 6
    assert doc["error"]["details"]["running"] is False


def test_broker_alone_prints_its_help_like_celeryctl_alone(cli: CliRun) -> None:
    root = cli()
    group = cli("broker")
    assert group.returncode == root.returncode
    assert "Usage: celeryctl broker" in group.output
    for command in ("install", "start", "stop", "status"):
        assert command in group.output
    assert "Traceback" not in group.output


# --------------------------------------------------------------------------- node names

BAD_NODE_NAMES = ["rabbit", "@localhost", "rabbit@", "bad name@localhost", "a@b@c", "rabbit@host name", "é@localhost"]


@pytest.mark.parametrize("name", [*BAD_NODE_NAMES, "x" * 250 + "@localhost"])
def test_a_bad_node_name_is_refused_before_any_call(name: str) -> None:
    with pytest.raises(UsageError) as err:
        Runner(node=name)
    assert err.value.hint and "NAME@HOST" in err.value.hint


def test_node_name_from_a_flag_is_exit_2_from_env_or_file_exit_3(cli: CliRun, tmp_path: Path) -> None:
    r = cli("setup-broker", "--node", "bad name", "--dry-run")
    assert r.returncode == 2 and r.stderr.splitlines()[0] == "error: --node 'bad name' is not NAME@HOST"
    r = cli("setup-broker", "--dry-run", "--json", env={"CELERYCTL_NODE": "rabbit@"})
    assert r.returncode == 3
    assert r.json()["error"]["message"] == "CELERYCTL_NODE 'rabbit@' has an invalid host part ''"
    config = tmp_path / "work" / "celeryctl.toml"
    config.write_text('node = "rabbit"\n')
    r = cli("setup-broker", "--dry-run")
    assert r.returncode == 3 and f"node in {config} 'rabbit' is not NAME@HOST" in r.stderr
    assert "Traceback" not in r.output


def test_a_fully_qualified_node_uses_long_names() -> None:
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    argv = Runner(bin_dir=bin_dir, node="rabbit@host.example.com").argv("rabbitmqctl", ["status"])
    assert argv[1:] == ["-n", "rabbit@host.example.com", "--longnames", "status"]
    argv = Runner(bin_dir=bin_dir, node="rabbit@localhost").argv("rabbitmqctl", ["status"])
    assert argv[1:] == ["-n", "rabbit@localhost", "status"]


# --------------------------------------------------------------------------- nodes that cannot answer


def test_a_remote_node_without_epmd_fails_fast(cli: CliRun) -> None:
    # 192.0.2.1 (TEST-NET-1) never answers: rabbitmqctl alone waits for its own long timeout
    r = cli("setup-broker", "--node", "rabbit@192.0.2.1", "--dry-run", timeout=40)
    assert r.returncode == 6, r.output
    assert "RabbitMQ node rabbit@192.0.2.1 is not reachable: nothing answers on 192.0.2.1:4369" in r.stderr
    assert "hint:" in r.stderr and "Traceback" not in r.output


def test_a_node_whose_host_does_not_resolve_fails_fast(cli: CliRun) -> None:
    r = cli("setup-broker", "--node", "rabbit@celeryctl-no-such-host.invalid", "--dry-run", "--json", timeout=40)
    assert r.returncode == 6, r.output
    message = r.json()["error"]["message"]
    assert message.startswith("RabbitMQ node rabbit@celeryctl-no-such-host.invalid is not reachable: host ")
    assert "resolve" in message


def test_a_resolver_that_never_answers_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead DNS server (rabbitmqctl alone waits ~50 s): faked, the real one cannot be made to hang."""
    import celeryctl.rabbitmq.ctl as ctl

    release = threading.Event()

    def hang(*_args: object, **_kwargs: object) -> list[object]:
        release.wait(60)
        raise OSError("released")

    monkeypatch.setattr(socket, "getaddrinfo", hang)
    monkeypatch.setattr(ctl, "RESOLVE_TIMEOUT", 0.2)
    try:
        with pytest.raises(UnreachableError) as err:
            Runner(bin_dir=find_bin_dir(), node="rabbit@somewhere-far").run("status")
    finally:
        release.set()
    assert err.value.message == (
        "RabbitMQ node rabbit@somewhere-far is not reachable: host somewhere-far did not resolve within 0.2 s"
    )
    assert err.value.exit_code == 6
