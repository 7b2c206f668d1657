"""celeryctl doctor against the real RabbitMQ node and real worker processes.

Each scenario runs the CLI twice: with --json (one document, parsed) and as a table; neither
may print a traceback.  Names (vhosts, users, queues, workers) are unique per module run.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from celeryctl.broker import BrokerUrl, build_amqp_url
from celeryctl.doctor import TITLES, version_problems
from celeryctl.rabbitmq.node import Node, pick_free_port
from tests.conftest import REPO, CliResult, CliRun, RabbitNode, Vhost, VhostFactory, Workers, celery_worker, wait_for

TAG = uuid.uuid4().hex[:8]

APP_MODULE = """
from celery import Celery

app = Celery("docapp")
app.conf.task_routes = {"docapp.stuck": {"queue": "stuckq"}}


@app.task(name="docapp.add")
def add(x, y):
    return x + y


@app.task(name="docapp.stuck")
def stuck():
    return 1
"""


def doctor(
    cli: CliRun, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, table: bool = True
) -> tuple[CliResult, dict[str, dict[str, Any]]]:
    """Run doctor --json (and, with ``table``, as a table too); return the JSON run and checks by name."""
    res = cli("doctor", "--json", *args, env=env, cwd=cwd)
    assert "Traceback" not in res.output, res.output
    doc = res.json()
    assert [c["name"] for c in doc["checks"]] == list(TITLES)
    assert all(c["status"] in ("ok", "warn", "fail", "skip") for c in doc["checks"])
    assert doc["ok"] is (res.returncode == 0)
    assert res.returncode == (0 if doc["ok"] else 1), res.output
    if table:
        plain = cli("doctor", *args, env=env, cwd=cwd)
        assert "Traceback" not in plain.output, plain.output
        assert plain.returncode == res.returncode, plain.output
        for title in ("TCP connection", "permissions", "workers", "local node"):
            assert title in plain.stdout
    return res, {c["name"]: c for c in doc["checks"]}


def statuses(checks: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: c["status"] for name, c in checks.items()}


def no_secret(res: CliResult, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in res.output


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def idle_vhost(make_vhost: VhostFactory) -> Vhost:
    """A vhost open to guest that no worker consumes from."""
    return make_vhost("doctor-idle")


@pytest.fixture(scope="module")
def vhosts(make_vhost: VhostFactory, idle_vhost: Vhost) -> dict[str, str]:
    """guest's URLs of two vhosts: 'busy' gets a worker, 'idle' does not."""
    return {"busy": make_vhost("doctor-busy").url, "idle": idle_vhost.url}


@pytest.fixture(scope="module")
def worker(vhosts: dict[str, str], module_workers: Workers) -> str:
    """A real worker of the built-in demo app on the 'busy' vhost (plain celery CLI); its node name."""
    env = {"CELERY_BROKER_URL": vhosts["busy"], "CELERY_RESULT_BACKEND": "rpc://", "PYTHONPATH": str(REPO)}
    args = ("-c", "1", "--without-mingle", "--without-gossip", "-Q", "celery", "--loglevel", "INFO")
    return module_workers.start(celery_worker("celeryctl.demo:app"), vhosts["busy"], *args, env=env).name


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    d = tmp_path / "app"
    d.mkdir()
    (d / "docapp.py").write_text(APP_MODULE)
    return d


def own_node_env(rabbit: RabbitNode, url: str) -> dict[str, str]:
    # The workers here are plain Celery: classic queues (under quorum, doctor's "queue types" fails).
    return {"CELERYCTL_DATA_DIR": str(rabbit.data_dir), "CELERYCTL_BROKER_URL": url, "CELERYCTL_QUEUE_TYPE": "classic"}


# --------------------------------------------------------------------------- healthy


def test_healthy_with_a_worker_is_all_ok(cli: CliRun, rabbit: RabbitNode, vhosts: dict[str, str], worker: str) -> None:
    res, checks = doctor(cli, "--strict", env=own_node_env(rabbit, vhosts["busy"]))
    assert statuses(checks) == dict.fromkeys(TITLES, "ok"), res.stdout
    assert res.returncode == 0
    assert checks["handshake"]["data"]["version"] == rabbit.version  # what the node itself reports
    assert checks["permissions"]["data"]["round_trip_ms"] > 0
    workers = checks["workers"]["data"]["workers"]
    assert [w["queues"] for w in workers if w["name"] == worker] == [["celery"]]
    assert checks["app"]["data"]["spec"] == "celeryctl.demo:app"
    assert checks["app"]["data"]["tasks"]
    assert checks["backend"]["data"]["backend"] == "RPCBackend"
    assert checks["local_node"]["data"]["celeryctl_node"] is True
    assert checks["alarms"]["detail"] == "no alarms (node asked)"
    assert checks["settings"]["data"]["sources"]["broker_url"] == "env CELERYCTL_BROKER_URL"
    no_secret(res, "guest:guest")


def test_verbose_says_where_each_setting_came_from(
    cli: CliRun, rabbit: RabbitNode, vhosts: dict[str, str], worker: str
) -> None:
    res = cli("doctor", "-v", "--backend", "rpc://", env=own_node_env(rabbit, vhosts["busy"]))
    assert res.returncode == 0, res.output
    assert "Traceback" not in res.output
    assert "broker_url from env CELERYCTL_BROKER_URL" in res.stdout
    assert "result_backend from flag --backend" in res.stdout
    assert "healthy" in res.stdout
    assert "guest:guest" not in res.output


def test_healthy_without_a_worker_warns_on_workers(cli: CliRun, rabbit: RabbitNode, vhosts: dict[str, str]) -> None:
    env = own_node_env(rabbit, vhosts["idle"])
    res, checks = doctor(cli, "--ping-timeout", "0.3", env=env)
    assert res.returncode == 0
    assert checks["workers"]["status"] == "warn"
    assert "no worker answered" in checks["workers"]["detail"]
    assert "celeryctl worker" in checks["workers"]["hint"]
    others = {n: s for n, s in statuses(checks).items() if n != "workers"}
    assert set(others.values()) == {"ok"}, others
    strict = cli("doctor", "--json", "--strict", "--ping-timeout", "0.3", env=env)
    assert strict.returncode == 1 and strict.json()["ok"] is False


def test_queue_with_messages_and_no_consumer_warns(
    cli: CliRun, rabbit: RabbitNode, vhosts: dict[str, str], app_dir: Path
) -> None:
    import pika

    queue = "stuckq"
    conn = pika.BlockingConnection(BrokerUrl.parse(vhosts["idle"]).pika_parameters())
    try:
        ch = conn.channel()
        ch.queue_declare(queue=queue, durable=True)
        for i in range(3):
            ch.basic_publish("", queue, f"m{i}".encode())
        wait_for(lambda: ch.queue_declare(queue=queue, passive=True).method.message_count == 3, timeout=10)
        res, checks = doctor(
            cli, "-A", "docapp", "--ping-timeout", "0.3", env=own_node_env(rabbit, vhosts["idle"]), cwd=app_dir
        )
    finally:
        ch.queue_delete(queue=queue)
        conn.close()
    assert checks["app"]["status"] == "ok"
    assert checks["app"]["data"]["queues"] == ["celery", "stuckq"]
    assert checks["queues"]["status"] == "warn"
    assert "'stuckq' (3)" in checks["queues"]["detail"]
    assert "celeryctl worker -Q stuckq" in checks["queues"]["hint"]
    depth = {q["name"]: q for q in checks["queues"]["data"]["queues"]}
    assert depth["stuckq"]["messages"] == 3 and depth["stuckq"]["consumers"] == 0
    assert checks["workers"]["status"] == "warn"
    assert res.returncode == 0


def test_a_worker_that_misses_a_routed_queue_is_named(
    cli: CliRun, rabbit: RabbitNode, vhosts: dict[str, str], worker: str, app_dir: Path
) -> None:
    res, checks = doctor(cli, "-A", "docapp", env=own_node_env(rabbit, vhosts["busy"]), cwd=app_dir, table=False)
    assert checks["workers"]["status"] == "warn"
    assert checks["workers"]["data"]["unserved_queues"] == ["stuckq"]
    assert "stuckq" in checks["workers"]["hint"]
    assert res.returncode == 0  # a warning, not a failure, without --strict


def test_the_apps_own_broker_is_the_one_checked(
    cli: CliRun, idle_vhost: Vhost, vhosts: dict[str, str], app_dir: Path
) -> None:
    (app_dir / "ownbroker.py").write_text(
        f"from celery import Celery\napp = Celery('ownbroker', broker={vhosts['idle']!r})\n"
        "@app.task(name='ownbroker.t')\ndef t():\n    return 1\n"
    )
    res, checks = doctor(cli, "-A", "ownbroker", "--ping-timeout", "0.2", cwd=app_dir, table=False)
    assert "the app sets its own broker" in checks["settings"]["detail"]
    assert checks["tcp"]["status"] == "ok" and checks["permissions"]["status"] == "ok"
    assert res.json()["broker_url"] == idle_vhost.url.replace("guest:guest@", "guest:****@")  # the app's, masked
    assert res.returncode == 0


def test_an_app_that_does_not_import_fails_only_the_app_check(
    cli: CliRun, rabbit: RabbitNode, vhosts: dict[str, str], app_dir: Path
) -> None:
    (app_dir / "brokenapp.py").write_text("import does_not_exist_anywhere\n")
    res, checks = doctor(cli, "-A", "brokenapp", env=own_node_env(rabbit, vhosts["idle"]), cwd=app_dir, table=False)
    assert res.returncode == 1
    assert checks["app"]["status"] == "fail"
    assert "does_not_exist_anywhere" in checks["app"]["detail"]
    assert checks["app"]["hint"]
    assert checks["permissions"]["status"] == "ok"
    assert {checks[n]["status"] for n in ("backend", "workers", "queues")} == {"skip"}


# --------------------------------------------------------------------------- the broker is not there


def test_nothing_listening_on_the_port(cli: CliRun) -> None:
    port = pick_free_port([], set())
    res, checks = doctor(cli, "--broker", f"amqp://guest:guest@127.0.0.1:{port}//")
    assert res.returncode == 1
    assert checks["tcp"]["status"] == "fail"
    assert checks["tcp"]["data"]["kind"] == "refused"
    assert "celeryctl broker start" in checks["tcp"]["hint"]
    for name in ("handshake", "auth", "vhost", "permissions", "alarms", "backend", "workers", "queues"):
        assert checks[name]["status"] == "skip", name
    assert checks["app"]["status"] == "ok"
    assert checks["versions"]["status"] == "ok"
    assert [c for c in checks.values() if c["status"] == "fail"] == [checks["tcp"]]


def test_memory_alarm_then_broker_stopped(cli: CliRun, tmp_path: Path) -> None:
    """A private node of its own: an alarm must not touch the shared node."""
    data_dir = tmp_path / "private"
    node = Node(data_dir / "node")
    info, _ = node.start(pick_free_port([], set()))
    env = {"CELERYCTL_DATA_DIR": str(data_dir)}
    try:
        node.runner(info).run("set_vm_memory_high_watermark", "absolute", "1")
        res, checks = doctor(cli, "--timeout", "1", "--broker", info.url, env=env, table=False)
        assert res.returncode == 1
        alarms = checks["alarms"]
        assert alarms["status"] == "fail" and alarms["data"]["blocked"] is True
        assert any("Memory alarm" in str(a) for a in alarms["data"]["alarms"]), alarms
        assert "free disk space or memory" in alarms["hint"]
        # Publishing would hang: those checks are skipped, not failed.
        assert checks["workers"]["status"] == "skip" and checks["backend"]["status"] == "skip"
        assert checks["queues"]["status"] == "ok"
        assert [c["name"] for c in checks.values() if c["status"] == "fail"] == ["alarms"]
    finally:
        node.stop()
    res, checks = doctor(cli, "--broker", info.url, env=env)
    assert res.returncode == 1
    assert checks["tcp"]["status"] == "fail" and checks["tcp"]["data"]["kind"] == "refused"
    local = checks["local_node"]
    assert local["status"] == "fail"
    assert "is not running" in local["detail"] and info.name in local["detail"]
    assert local["hint"] == "start it: celeryctl broker start"
    assert checks["workers"]["status"] == "skip"


def test_a_port_that_never_answers_times_out(cli: CliRun) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # accept, never send a byte
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = server.getsockname()[1]
        res, checks = doctor(cli, "--timeout", "0.5", "--broker", f"amqp://guest:guest@127.0.0.1:{port}//", table=False)
    finally:
        stop.set()
        thread.join(5)
        for s in held:
            s.close()
        server.close()
    assert res.returncode == 1
    assert checks["tcp"]["status"] == "ok"
    assert checks["handshake"]["status"] == "fail"
    assert checks["handshake"]["data"]["kind"] == "timeout"
    assert checks["auth"]["status"] == "skip"


# --------------------------------------------------------------------------- credentials and permissions


def test_wrong_password(cli: CliRun, rabbit: RabbitNode, vhosts: dict[str, str]) -> None:
    url = vhosts["idle"].replace("guest:guest@", "guest:not-the-password@")
    res, checks = doctor(cli, env=own_node_env(rabbit, url))
    assert res.returncode == 1
    assert checks["handshake"]["status"] == "ok"
    assert checks["auth"]["status"] == "fail"
    assert "wrong user name or password" in checks["auth"]["detail"]
    assert "setup-broker" in checks["auth"]["hint"]
    assert checks["vhost"]["status"] == "skip" and checks["permissions"]["status"] == "skip"
    assert checks["local_node"]["status"] == "ok"
    no_secret(res, "not-the-password")


def test_unknown_vhost(cli: CliRun, rabbit: RabbitNode) -> None:
    vhost = f"doctor-missing-{TAG}"
    url = build_amqp_url("guest", "guest", "127.0.0.1", rabbit.port, vhost)
    res, checks = doctor(cli, env=own_node_env(rabbit, url))
    assert res.returncode == 1
    assert checks["auth"]["status"] == "ok"
    assert checks["vhost"]["status"] == "fail"
    assert "does not exist" in checks["vhost"]["detail"]
    assert f"add_vhost {vhost}" in checks["vhost"]["hint"]
    assert checks["permissions"]["status"] == "skip"


@pytest.fixture(scope="module")
def users(make_vhost: VhostFactory, idle_vhost: Vhost) -> dict[str, str]:
    """'none': a user with no permission on the idle vhost; 'readonly': may only read there."""
    none = make_vhost.user("doctor-none")
    readonly = make_vhost.user("doctor-readonly", vhost=idle_vhost, permissions=("^$", "^$", ".*"))
    return {
        "none": idle_vhost.url_for(none.name, none.password),
        "readonly": idle_vhost.url_for(readonly.name, readonly.password),
    }


def test_user_without_permission_on_the_vhost(cli: CliRun, rabbit: RabbitNode, users: dict[str, str]) -> None:
    res, checks = doctor(cli, env=own_node_env(rabbit, users["none"]))
    assert res.returncode == 1
    assert checks["auth"]["status"] == "ok"
    assert checks["vhost"]["status"] == "fail"
    assert "has no access to virtual host" in checks["vhost"]["detail"]
    assert "set_permissions" in checks["vhost"]["hint"]
    assert checks["permissions"]["status"] == "skip"
    no_secret(res, BrokerUrl.parse(users["none"]).url.split(":")[2].split("@")[0])


def test_read_only_user_names_configure_and_write(cli: CliRun, rabbit: RabbitNode, users: dict[str, str]) -> None:
    res, checks = doctor(cli, "--ping-timeout", "0.3", env=own_node_env(rabbit, users["readonly"]))
    assert res.returncode == 1
    perms = checks["permissions"]
    assert perms["status"] == "fail"
    assert perms["data"]["missing"] == ["configure", "write"]
    assert perms["data"]["read"] is True
    assert "configure and write" in perms["detail"]
    assert "set_permissions" in perms["hint"]
    assert checks["auth"]["status"] == "ok" and checks["vhost"]["status"] == "ok"
    # The same cause is not reported twice: the ping and the rpc reply path are skipped.
    assert checks["workers"]["status"] == "skip" and checks["backend"]["status"] == "skip"
    assert [c["name"] for c in checks.values() if c["status"] == "fail"] == ["permissions"]


# --------------------------------------------------------------------------- settings, versions, start-up


def test_broken_settings_file_is_a_failed_check(cli: CliRun, tmp_path: Path) -> None:
    work = tmp_path / "broken"
    work.mkdir()
    (work / "celeryctl.toml").write_text('broker_url = "amqp://localhost//"\ncolour = "blue"\n')
    res, checks = doctor(cli, cwd=work)
    assert res.returncode == 1
    assert checks["settings"]["status"] == "fail"
    assert "unknown key 'colour'" in checks["settings"]["detail"]
    assert checks["tcp"]["status"] == "skip" and checks["app"]["status"] == "skip"


def test_known_bad_version_combinations() -> None:
    warns, notes = version_problems("5.4.0", "5.3.7", "3.7.28", (3, 11))
    assert any("kombu 5.3.7" in w for w in warns)
    assert any("RabbitMQ 3.7.28" in w for w in warns)
    assert version_problems("5.7.0", "5.7.0", "3.10.8", (3, 11))[0] == []
    assert any("consumer_timeout" in n for n in version_problems("5.7.0", "5.7.0", "3.10.8", (3, 11))[1])
    assert any("Python 3.12" in w for w in version_problems("5.2.7", "5.2.4", "3.12.0", (3, 12))[0])


def test_doctor_help_does_not_import_celery_kombu_or_pika() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "celeryctl", "doctor", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--ping-timeout" in proc.stdout
    heavy = [line for line in proc.stderr.splitlines() if line.split("|")[-1].strip() in ("celery", "kombu", "pika")]
    assert heavy == []
