"""setup-broker on celeryctl's local 3-node cluster: one run, a login on every node, the failover
list saved; idempotent; still working (and naming the node) with member 1 down."""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from celeryctl.broker import build_amqp_url, url_password
from celeryctl.errors import CeleryctlError
from celeryctl.rabbitmq.ctl import Runner
from celeryctl.rabbitmq.node import pick_free_port
from celeryctl.settings import read_config_file
from tests.cluster.conftest import LocalCluster
from tests.conftest import CliRun, RabbitNode
from tests.faults.test_security import CmdlineScanner


def new_account() -> tuple[str, str, str]:
    return f"cu-{uuid.uuid4().hex[:8]}", f"cv-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex


def remove(runner: Runner, user: str, vhost: str) -> None:
    """Delete the test's user and vhost (cluster-wide), whatever the test got to."""
    for args in (("delete_user", user), ("delete_vhost", vhost)):
        try:
            runner.run(*args)
        except CeleryctlError:
            pass  # never created: the test failed before


@pytest.fixture
def account(local_cluster: LocalCluster) -> Iterator[tuple[str, str, str]]:
    """A fresh user, vhost and password on the cluster; deleted after the test."""
    found = new_account()
    yield found
    remove(local_cluster.runner(1), *found[:2])


@pytest.fixture
def api_account(mgmt_rabbit: RabbitNode) -> Iterator[tuple[str, str, str]]:
    """The same on the management node."""
    found = new_account()
    yield found
    remove(mgmt_rabbit.node.runner(), *found[:2])


def login(host: str, port: int, user: str, password: str, vhost: str) -> None:
    """An independent AMQP login (pika), with nothing of celeryctl's in between."""
    import pika

    params = pika.ConnectionParameters(
        host, port, vhost, pika.PlainCredentials(user, password), connection_attempts=1, socket_timeout=5
    )
    pika.BlockingConnection(params).close()


def test_setup_broker_on_the_local_cluster(
    cli: CliRun, local_cluster: LocalCluster, account: tuple[str, str, str], tmp_path: Path
) -> None:
    user, vhost, password = account
    config = tmp_path / "work" / "celeryctl.toml"  # the cli fixture's working directory: the default file
    ports = [info.port for info in local_cluster.infos]
    args = ("setup-broker", "--user", user, "--vhost", vhost, "--json")

    # One run (the local cluster is the default broker).
    done = cli(*args, "--password-stdin", env=local_cluster.env, input=password + "\n")
    assert done.returncode == 0, done.output
    assert password not in done.output and "Traceback" not in done.output
    doc = done.json()
    assert doc["changed"] is True and doc["via"] == "rabbitmqctl" and doc["verification"]["ok"] is True
    assert [(n["port"], n["status"]) for n in doc["nodes"]] == [(p, "ok") for p in ports]

    # An independent login on every node as the new user: users are cluster-wide.
    for port in ports:
        login("127.0.0.1", port, user, password, vhost)

    # The saved URL (mode 0600) is the failover list: the new user at every member.
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    saved, _ = read_config_file(config)
    assert saved["broker_url"] == ";".join(build_amqp_url(user, password, "127.0.0.1", p, vhost) for p in ports)
    written = config.stat().st_mtime_ns

    # Again (the password comes from the saved URL): nothing changes, nothing is written.
    again = cli(*args, env=local_cluster.env)
    assert again.returncode == 0, again.output
    doc = again.json()
    assert doc["changed"] is False and doc["settings_changed"] is False
    assert {i["action"] for i in doc["items"]} == {"unchanged"}
    assert all(n["ok"] for n in doc["nodes"]) and config.stat().st_mtime_ns == written

    first = local_cluster.infos[0]
    with local_cluster.down(1, kill=True):
        # Member 1 killed: provisioned through another member; member 1 named as unreachable (exit 6).
        down = cli(*args, "--rotate-password", env=local_cluster.env)
        assert down.returncode == 6, down.output
        assert "Traceback" not in down.output
        error = json.loads(down.stdout)["error"]
        assert error["code"] == "nodes_unreachable"
        details = error["details"]
        assert details["provisioned"] is True and details["changed"] is True
        assert first.name not in details["node"]
        assert details["unreachable"] == [f"127.0.0.1:{first.port}"]
        assert [n["status"] for n in details["nodes"]] == ["unreachable", "ok", "ok"]
        assert details["nodes"][0]["node"] == first.name
        new_password = url_password(read_config_file(config)[0]["broker_url"])
        assert new_password and new_password != password and new_password not in down.output

        # The same through --broker with the members' list, in text: the line names the node.
        listed = cli(
            "setup-broker",
            "--user",
            user,
            "--vhost",
            vhost,
            "--broker",
            local_cluster.url,
            env=local_cluster.env,
        )
        assert listed.returncode == 6, listed.output
        assert "nothing to change" in listed.stdout and "Traceback" not in listed.output
        assert f"127.0.0.1:{first.port} ({first.name}) is unreachable" in listed.stderr
        assert new_password not in listed.output
    # Back in the cluster, member 1 has the new password too.
    login("127.0.0.1", first.port, user, new_password, vhost)


def test_a_url_list_through_the_management_api(
    cli: CliRun, mgmt_rabbit: RabbitNode, api_account: tuple[str, str, str], tmp_path: Path
) -> None:
    """--broker with a list and --api: the login is verified on every host of the list."""
    user, vhost, password = api_account
    port, dead = mgmt_rabbit.port, pick_free_port([], {mgmt_rabbit.port})
    env = {"CELERYCTL_MANAGEMENT_URL": mgmt_rabbit.management_url.replace("http://", "http://guest:guest@")}
    args = ("setup-broker", "--user", user, "--vhost", vhost, "--json", "--password-env", "NEW_PW")
    hosts = f"amqp://127.0.0.1:{port};amqp://localhost:{port}"
    with CmdlineScanner(password) as scanner:  # no password in any process's argv meanwhile
        done = cli(*args, "--broker", hosts, env={**env, "NEW_PW": password})
    assert not scanner.leaks and scanner.rounds > 0
    assert done.returncode == 0, done.output
    doc = done.json()
    assert doc["via"] == "api" and [n["address"] for n in doc["nodes"] if n["ok"]] == [
        f"127.0.0.1:{port}",
        f"localhost:{port}",
    ]
    saved = read_config_file(tmp_path / "work" / "celeryctl.toml")[0]["broker_url"]
    assert saved == ";".join(build_amqp_url(user, password, h, port, vhost) for h in ("127.0.0.1", "localhost"))

    # A host of the list that does not answer: named, exit 6; the others verified.
    partial = cli(*args, "--broker", f"{hosts};amqp://127.0.0.1:{dead}", env={**env, "NEW_PW": password})
    assert partial.returncode == 6, partial.output
    details = json.loads(partial.stdout)["error"]["details"]
    assert details["changed"] is False and details["unreachable"] == [f"127.0.0.1:{dead}"]
    assert [n["status"] for n in details["nodes"]] == ["ok", "ok", "unreachable"]
    assert password not in partial.output
