"""status, queues, doctor and flower through the management HTTP API, against the real
management-enabled node (``mgmt_rabbit``), reached as a remote broker would be: no rabbitmqctl
on PATH, a data dir that is not the node's own."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from celeryctl.broker import ManagementUrl
from celeryctl.doctor.check import FAIL, OK, SKIP, WARN
from celeryctl.doctor.local_node import alarms_check
from celeryctl.doctor.management import check_management_api
from celeryctl.doctor.network import NetworkResult
from celeryctl.probe import AccessReport
from celeryctl.rabbitmq.api import ManagementApi, api_path
from celeryctl.rabbitmq.node import pick_free_port
from celeryctl.settings import load_settings
from tests.conftest import CliRun, RabbitNode, terminate, wait_for

UID = uuid.uuid4().hex[:8]
VHOST = f"monapi-{UID}"
QUEUE = f"monapi.work.{UID}"
HELD = 3  # messages a consumer holds unacknowledged (its prefetch)
TOTAL = 8
MGMT_ONLY = (f"monapi-mgmt-{UID}", f"pw-mgmt-{UID}")  # tag "management" only
NO_TAG = (f"monapi-none-{UID}", f"pw-none-{UID}")  # no tag: may not use the API at all


@dataclass
class ApiNode:
    rabbit: RabbitNode
    admin: ManagementApi

    def url(self, user: str = "guest", password: str = "guest") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.rabbit.port}/{VHOST}"

    def remote_env(self, empty_bin: Path, **extra: str) -> dict[str, str]:
        """A broker reached only through AMQP and the API: rabbitmqctl is nowhere to be found."""
        return {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
            "CELERYCTL_RABBITMQ_BIN_DIR": str(empty_bin),
            "CELERYCTL_BROKER_URL": self.url(),
            "CELERYCTL_MANAGEMENT_URL": self.rabbit.management_url,
            **extra,
        }

    def queue_row(self) -> dict[str, Any]:
        rows = self.admin.queues(VHOST, ("name", "messages_ready", "messages_unacknowledged", "consumers"))
        return next((r for r in rows if r["name"] == QUEUE), {})


def _user(admin: ManagementApi, name: str, password: str, tags: str) -> None:
    admin.put(api_path("users", name), {"password": password, "tags": tags})
    admin.put(api_path("permissions", VHOST, name), {"configure": ".*", "write": ".*", "read": ".*"})


@pytest.fixture(scope="module")
def node(mgmt_rabbit: RabbitNode) -> Iterator[ApiNode]:
    admin = ManagementApi(ManagementUrl.parse(mgmt_rabbit.management_url), "guest", "guest", timeout=5)
    admin.put(api_path("vhosts", VHOST), {})
    admin.put(api_path("permissions", VHOST, "guest"), {"configure": ".*", "write": ".*", "read": ".*"})
    _user(admin, *MGMT_ONLY, "management")
    _user(admin, *NO_TAG, "")
    try:
        yield ApiNode(mgmt_rabbit, admin)
    finally:
        for user in (MGMT_ONLY[0], NO_TAG[0]):
            admin.delete(api_path("users", user))
        admin.delete(api_path("vhosts", VHOST))
        admin.close()


@pytest.fixture(scope="module")
def held(node: ApiNode) -> Iterator[int]:
    """TOTAL messages in QUEUE, HELD of them delivered to a consumer (manual ack, prefetch HELD)
    that keeps them unacknowledged for the module; the API's statistics caught up."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(node.url()))
    channel = conn.channel()
    channel.queue_declare(QUEUE, durable=True)
    for i in range(TOTAL):
        channel.basic_publish("", QUEUE, f"m{i}".encode())
    channel.basic_qos(prefetch_count=HELD)
    delivered: list[int] = []
    channel.basic_consume(QUEUE, lambda _ch, method, _p, _b: delivered.append(method.delivery_tag), auto_ack=False)
    wait_for(lambda: conn.process_data_events(0.05) or len(delivered) >= HELD, timeout=10, what="the deliveries")
    # The API's counts are its statistics samples (every 5 s by default): wait for the one that
    # shows the consumer holding its messages.
    want = {"messages_ready": TOTAL - HELD, "messages_unacknowledged": HELD, "consumers": 1}
    wait_for(
        lambda: all(node.queue_row().get(k) == v for k, v in want.items()),
        timeout=20,
        interval=0.25,
        what="the API's statistics to show the unacked messages",
    )
    try:
        yield HELD
    finally:
        conn.close()


@pytest.fixture
def empty_bin(tmp_path: Path) -> Path:
    d = tmp_path / "no-rabbitmq"
    d.mkdir()
    return d


# --------------------------------------------------------------------------- status and queues


def test_unacked_counts_through_the_api_alone(cli: CliRun, node: ApiNode, held: int, empty_bin: Path) -> None:
    env = node.remote_env(empty_bin)
    st = cli("status", "--json", "-t", "0.1", env=env)
    assert st.returncode == 0, st.output
    doc = st.json()
    assert doc["queue_source"] == "api"
    (row,) = [q for q in doc["queues"] if q["name"] == QUEUE]
    assert (row["ready"], row["unacked"], row["consumers"]) == (TOTAL - held, held, 1)
    assert row["type"] == "classic" and doc["totals"]["unacked"] == held

    qs = cli("queues", "--json", env=env)
    assert qs.returncode == 0, qs.output
    listed = qs.json()
    assert listed["source"] == "api"
    (row,) = [q for q in listed["queues"] if q["name"] == QUEUE]
    assert (row["ready"], row["unacked"], row["consumers"], row["messages"]) == (TOTAL - held, held, 1, TOTAL)

    top = cli("top", "--json", "-d", "0.2", "-Q", QUEUE, env=env)
    assert top.returncode == 0, top.output
    (row,) = [q for q in top.json()["queues"] if q["name"] == QUEUE]
    assert (row["ready"], row["unacked"], row["consumers"]) == (TOTAL - held, held, 1)


def test_own_node_api_falls_back_to_rabbitmqctl_for_a_user_it_refuses(cli: CliRun, node: ApiNode, held: int) -> None:
    """celeryctl's node runs the plugin: guest lists through the API; a user with no management
    tag (the API refuses it) gets the same counts through rabbitmqctl, without an error."""
    own = {"CELERYCTL_DATA_DIR": str(node.rabbit.data_dir)}
    api = cli("queues", "--json", "-Q", QUEUE, env={**own, "CELERYCTL_BROKER_URL": node.url()})
    assert api.returncode == 0 and api.json()["source"] == "api", api.output
    ctl = cli("queues", "--json", "-Q", QUEUE, env={**own, "CELERYCTL_BROKER_URL": node.url(*NO_TAG)})
    assert ctl.returncode == 0, ctl.output
    doc = ctl.json()
    assert doc["source"] == "rabbitmqctl"
    (row,) = [q for q in doc["queues"] if q["name"] == QUEUE]
    assert (row["ready"], row["unacked"]) == (TOTAL - held, held)
    # doctor says so, as a warning: the commands work (through rabbitmqctl), nothing is broken
    settings = load_settings({"broker_url": node.url(*NO_TAG)}, env=own)
    found = check_management_api(settings, settings.broker_target, 2.0)
    assert found.check.status == WARN, found.check
    assert "use rabbitmqctl instead" in found.check.detail and "monitoring" in (found.check.hint or "")
    assert found.cluster.status == OK and found.cluster.detail.startswith("not asked")


def test_a_configured_api_that_fails_is_the_commands_exit_code(cli: CliRun, node: ApiNode, empty_bin: Path) -> None:
    closed = f"http://127.0.0.1:{pick_free_port([], set())}/"
    env = node.remote_env(empty_bin)
    r = cli("status", "--api", closed, "-t", "0.1", env=env)
    assert r.returncode == 6, r.output
    assert "Traceback" not in r.output
    assert r.stderr.startswith(f"error: cannot reach the management API at {closed}: connection refused")
    assert "hint:" in r.stderr

    wrong = node.rabbit.management_url.replace("http://", "http://guest:not-the-password@")
    r = cli("queues", env={**env, "CELERYCTL_MANAGEMENT_URL": wrong})
    assert r.returncode == 7, r.output
    assert "refused the login of 'guest'" in r.stderr and "not-the-password" not in r.output
    assert "Traceback" not in r.output


# --------------------------------------------------------------------------- doctor


def test_doctor_reads_the_remote_broker_through_the_api(cli: CliRun, node: ApiNode, empty_bin: Path) -> None:
    env = node.remote_env(empty_bin)
    del env["CELERYCTL_MANAGEMENT_URL"]
    r = cli("doctor", "--json", "--api", node.rabbit.management_url, "--ping-timeout", "0.1", env=env)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    mgmt = checks["management"]
    assert mgmt["status"] == OK, mgmt
    assert mgmt["data"]["version"] == node.rabbit.version and "administrator" in mgmt["data"]["tags"]
    assert f"RabbitMQ {node.rabbit.version}" in mgmt["detail"]
    assert checks["cluster"]["status"] == OK
    assert checks["cluster"]["data"]["members"] == [{"name": node.rabbit.name, "running": True}]
    assert checks["alarms"]["detail"] == "no alarms (management API asked)"
    assert checks["local_node"]["status"] != FAIL  # no rabbitmqctl here: not a fault of the broker


def _doctor_management(node: ApiNode, management_url: str, user: str = "guest", password: str = "guest") -> Any:
    settings = load_settings({}, env={"CELERYCTL_MANAGEMENT_URL": management_url})
    return check_management_api(settings, load_settings({"broker_url": node.url(user, password)}, env={}).broker_target, 2.0)


def test_doctor_management_check_failures(node: ApiNode) -> None:
    wrong = _doctor_management(node, node.rabbit.management_url.replace("http://", "http://guest:nope@"))
    assert wrong.check.status == FAIL and wrong.check.data["exit_code"] == 7
    assert "exit 7" in wrong.check.detail and "password" in (wrong.check.hint or "")
    assert wrong.cluster.status == SKIP

    closed = _doctor_management(node, f"http://127.0.0.1:{pick_free_port([], set())}/")
    assert closed.check.status == FAIL and closed.check.data["exit_code"] == 6
    assert "connection refused" in closed.check.detail and "--management" in (closed.check.hint or "")

    user, password = MGMT_ONLY
    limited = _doctor_management(node, node.rabbit.management_url, user, password)
    assert limited.check.status == WARN, limited.check
    assert "'monitoring'" in limited.check.detail
    assert f"set_user_tags {user} monitoring management" in (limited.check.hint or "")
    assert limited.cluster.status == OK and limited.cluster.detail.startswith("not asked")


def test_alarms_named_per_node_from_the_api() -> None:
    """The alarms check with the API's answer (an alarm cannot be raised on the shared node)."""
    net = NetworkResult({}, access=AccessReport(ok=True))
    alarms = [{"node": "rabbit@b", "resource": "disk"}]
    check = alarms_check(net, None, alarms)
    assert check.status == FAIL and check.detail == "the management API reports alarms: disk on rabbit@b"
    assert alarms_check(net, None, []).detail == "no alarms (management API asked)"


# --------------------------------------------------------------------------- flower


FLOWER_APP = """
from celery import Celery

app = Celery("monapi_flower", broker={broker!r})
app.conf.task_default_queue = {queue!r}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_flower_reads_queue_lengths_from_the_management_api(
    node: ApiNode, held: int, tmp_path: Path, empty_bin: Path, isolated_env: dict[str, str]
) -> None:
    (tmp_path / "monapi_flower.py").write_text(FLOWER_APP.format(broker=node.url(), queue=QUEUE))
    port = _free_port()
    basic = f"admin:pw-{UID}"  # Flower's API answers only behind authentication
    env = {**isolated_env, **node.remote_env(empty_bin), "PYTHONPATH": str(tmp_path), "CELERYCTL_FLOWER_BASIC_AUTH": basic}
    proc = subprocess.Popen(
        [sys.executable, "-m", "celeryctl", "flower", "--port", str(port), "-A", "monapi_flower"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/queues/length",
        headers={"Authorization": "Basic " + base64.b64encode(basic.encode()).decode()},
    )

    def lengths() -> list[dict[str, Any]] | None:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return json.loads(resp.read()).get("active_queues") or None
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    try:
        queues = wait_for(lengths, timeout=30, interval=0.25, what="Flower's queue lengths")
        assert isinstance(queues, list)
        (row,) = [q for q in queues if q["name"] == QUEUE]
        assert row["messages"] == TOTAL and row["messages_unacknowledged"] == held  # the API's own fields
        assert b"guest:guest" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    finally:
        text = terminate(proc)
    assert f"broker API http://guest:****@127.0.0.1:{node.rabbit.management_url.rsplit(':', 1)[1]}api/" in text
    assert "guest:guest" not in text and "Traceback" not in text
