"""celeryctl broker install/start/stop/status against real RabbitMQ nodes."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pika
import pytest

from celeryctl.errors import NotInstalledError, PermissionDeniedError, UsageError
from celeryctl.rabbitmq.node import Node, pick_free_port
from tests.conftest import CliRun, RabbitNode, fake_bin


def test_lifecycle_start_status_stop_restart(cli: CliRun, tmp_path: Path) -> None:
    port = pick_free_port([], set())
    env = {"CELERYCTL_DATA_DIR": str(tmp_path / "d")}
    r = cli("broker", "start", "--port", str(port), env=env)
    assert r.returncode == 0, r.output
    url = r.stdout.strip()
    assert url == f"amqp://guest:****@127.0.0.1:{port}/%2F"  # URLs are always shown masked
    real_url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    node = Node(tmp_path / "d" / "node")
    try:
        # the printed URL answers a real AMQP client
        conn = pika.BlockingConnection(pika.URLParameters(real_url))
        conn.close()
        # data dir and cookie are private
        assert stat.S_IMODE(node.dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((node.home / ".erlang.cookie").stat().st_mode) == 0o400

        again = cli("broker", "start", "--port", str(port), env=env)
        assert again.returncode == 0
        assert "already running" in again.stderr

        st = cli("broker", "status", "--json", env=env)
        assert st.returncode == 0
        doc = st.json()
        assert doc["running"] is True and doc["port"] == port and doc["pid"] > 0
        assert doc["version"] and doc["data_dir"] == str(node.dir)
        assert doc["url"] == url

        # the settings default to the running node: no flags needed
        from celeryctl.settings import load_settings

        assert load_settings(env=env, cwd=tmp_path).broker == real_url

        pids = node.processes()
        assert pids
        stop = cli("broker", "stop", env=env)
        assert stop.returncode == 0 and stop.stdout.strip() == "stopped"
        assert node.processes() == []  # beam, epmd and children all gone

        st = cli("broker", "status", "--json", env=env)
        assert st.returncode == 6 and st.json()["error"]["details"]["running"] is False

        # restart reuses the port of last time
        r = cli("broker", "start", env=env)
        assert r.returncode == 0, r.output
        assert r.stdout.strip() == url
    finally:
        node.stop()
    assert node.processes() == []
    assert cli("broker", "stop", env=env).stdout.strip() == "not running"


def test_start_on_a_taken_port_names_it_and_suggests_another(cli: CliRun, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", pick_free_port([], set())))  # in the node's range (0 would pick an ephemeral port)
        s.listen()
        port = s.getsockname()[1]
        r = cli("broker", "start", "--port", str(port), env={"CELERYCTL_DATA_DIR": str(tmp_path / "d")})
        assert r.returncode == 9
        assert f"port {port}" in r.stderr and "already in use" in r.stderr
        assert "--port" in r.stderr  # the hint suggests a free port
        assert "Traceback" not in r.output
        r = cli("broker", "start", "--port", str(port), "--json", env={"CELERYCTL_DATA_DIR": str(tmp_path / "d")})
        err = r.json()["error"]
        assert err["code"] == "node" and err["details"]["suggested_port"] != port


def test_start_when_rabbitmq_is_missing(cli: CliRun, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    env = {"PATH": str(empty), "CELERYCTL_RABBITMQ_BIN_DIR": str(empty), "CELERYCTL_DATA_DIR": str(tmp_path / "d")}
    r = cli("broker", "start", "--port", str(pick_free_port([], set())), env=env)
    assert r.returncode == 4
    assert "RabbitMQ is not installed" in r.stderr
    assert "celeryctl broker install" in r.stderr
    assert "Traceback" not in r.output


def test_failed_start_shows_the_log_tail_and_its_path(cli: CliRun, tmp_path: Path) -> None:
    fake = fake_bin(tmp_path / "fake-bin", "echo 'BOOT FAILED: {error,{eaddrinuse,25672}}'\nexit 1\n")
    env = {"CELERYCTL_RABBITMQ_BIN_DIR": str(fake), "CELERYCTL_DATA_DIR": str(tmp_path / "d")}
    r = cli("broker", "start", "--port", str(pick_free_port([], set())), env=env)
    assert r.returncode == 9
    assert "failed to start" in r.stderr
    assert "BOOT FAILED: {error,{eaddrinuse,25672}}" in r.stderr  # the log's last lines
    assert str(tmp_path / "d" / "node" / "log") in r.stderr  # and where the log is
    assert "Traceback" not in r.output


def test_install_when_present_says_version(cli: CliRun, rabbit: RabbitNode) -> None:
    r = cli("broker", "install", "--json")
    assert r.returncode == 0
    doc = r.json()
    assert doc["installed_now"] is False and doc["version"]


def test_install_not_root_prints_the_sudo_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from celeryctl.rabbitmq import install as installer

    monkeypatch.setattr(installer, "find_bin_dir", lambda env=None: None)
    monkeypatch.setattr(installer.os, "geteuid", lambda: 1000)
    with pytest.raises(PermissionDeniedError) as info:
        installer.install()
    assert "sudo" in (info.value.hint or "") and "apt-get install -y rabbitmq-server" in (info.value.hint or "")


def test_session_node_is_private(rabbit: RabbitNode) -> None:
    # the fixture's node listens on loopback only, on a port below the ephemeral range
    assert rabbit.port < 32768
    users = rabbit.runner().json("list_users")
    assert {"user": "guest", "tags": ["administrator"]} in users
    with pytest.raises(UsageError, match="out of range"):
        Node(rabbit.node.dir.parent / "other").start(0)


def test_missing_install_error_type() -> None:
    from celeryctl.rabbitmq.ctl import require_bin_dir

    with pytest.raises(NotInstalledError):
        require_bin_dir({"CELERYCTL_RABBITMQ_BIN_DIR": "/nonexistent"})


def test_rabbitmqctl_against_a_node_without_epmd_says_not_running_and_starts_nothing(tmp_path: Path) -> None:
    from celeryctl.errors import UnreachableError
    from celeryctl.rabbitmq.ctl import Runner

    port = pick_free_port([], set())  # nothing listens there: no epmd, so no node
    runner = Runner(node="nosuch@localhost", env={"ERL_EPMD_PORT": str(port), "HOME": str(tmp_path)})
    with pytest.raises(UnreachableError, match="nosuch@localhost is not running"):
        runner.run("status")
    assert runner.calls == []  # no Erlang VM was started (it would have started an epmd)
    with socket.socket() as s:
        s.settimeout(0.5)
        assert s.connect_ex(("127.0.0.1", port)) != 0  # and no epmd is left listening
