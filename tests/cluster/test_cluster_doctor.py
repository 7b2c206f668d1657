"""``celeryctl doctor`` on the real 3-node local cluster: every node of the URL list, the members,
a quorum queue's leader and members online, quorum-critical members; and the RabbitMQ 4.x
compatibility table (a pure function: only 3.10 runs here)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from celeryctl.broker.url import build_amqp_url
from celeryctl.doctor.cluster import ClusterView, critical_members, members_check, quorum_check
from celeryctl.doctor.compat import AppSettings, compat_problems, ha_policy_names
from tests.cluster.conftest import NODES, LocalCluster
from tests.conftest import CliRun, wait_for

VHOST = "cluster-doctor"
QUEUE = "doctor-qq"
CELERY_57 = AppSettings()  # Celery's defaults, nothing set


@pytest.fixture(scope="module")
def url(local_cluster: LocalCluster) -> Iterator[str]:
    """The failover list of every member in our own vhost, which holds one quorum queue on 3 nodes."""
    import pika

    runner = local_cluster.runner(1)
    runner.run("add_vhost", "--", VHOST)
    runner.run("set_permissions", "-p", VHOST, "--", "guest", ".*", ".*", ".*")
    urls = [build_amqp_url("guest", "guest", "127.0.0.1", i.port, VHOST) for i in local_cluster.infos]
    from celeryctl.broker import BrokerUrl

    conn = pika.BlockingConnection(BrokerUrl.parse(urls[0]).pika_parameters(timeout=10))
    try:
        conn.channel().queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    finally:
        conn.close()
    try:
        yield ";".join(urls)
    finally:
        local_cluster.runner(1).run("delete_vhost", "--", VHOST)


def doctor(cli: CliRun, local_cluster: LocalCluster, url: str) -> tuple[int, dict[str, Any]]:
    res = cli("doctor", "--json", "--broker", url, "--timeout", "5", env=local_cluster.env, timeout=120)
    assert "Traceback" not in res.output
    doc = res.json()
    return res.returncode, {c["name"]: c for c in doc["checks"]}


def queue_row(check: dict[str, Any]) -> dict[str, Any]:
    return next(q for q in check["data"]["queues"] if q["name"] == QUEUE)


def test_doctor_on_the_healthy_cluster(cli: CliRun, local_cluster: LocalCluster, url: str) -> None:
    code, checks = doctor(cli, local_cluster, url)
    assert code == 0, {n: c["detail"] for n, c in checks.items() if c["status"] == "fail"}
    tcp = checks["tcp"]
    assert tcp["status"] == "ok" and [n["ok"] for n in tcp["data"]["nodes"]] == [True] * NODES
    cluster = checks["cluster"]
    assert cluster["status"] == "ok" and cluster["data"]["source"] == "rabbitmqctl"
    assert sorted(m["name"] for m in cluster["data"]["members"] if m["running"]) == sorted(
        i.name for i in local_cluster.infos
    )
    assert cluster["data"]["partitions"] == []
    quorum = checks["quorum"]
    assert quorum["status"] == "ok", quorum["detail"]
    row = queue_row(quorum)
    assert (row["online"], row["members"]) == (NODES, NODES) and row["leader"] in {i.name for i in local_cluster.infos}
    assert f"'{QUEUE}' 3/3 online, leader" in quorum["detail"]
    assert checks["alarms"]["status"] == "ok"
    # The one real run of the compatibility check: 3.10 with this celery and kombu, no HA policy.
    assert checks["compat"]["status"] == "ok", checks["compat"]["detail"]
    assert checks["compat"]["data"]["server"].startswith("3.10")


def test_doctor_with_one_then_two_members_down(cli: CliRun, local_cluster: LocalCluster, url: str) -> None:
    first, second, third = (i.name for i in local_cluster.infos)
    with local_cluster.down(1):
        wait_for(lambda: _leader(local_cluster, 3) in (second, third), timeout=30, what="a new leader")
        code, checks = doctor(cli, local_cluster, url)
        # One of three down: the clients fail over, the queue keeps its quorum; warnings exit 0.
        assert code == 0, {n: c["detail"] for n, c in checks.items() if c["status"] == "fail"}
        tcp = checks["tcp"]
        assert tcp["status"] == "warn" and "2 of 3 nodes accept connections" in tcp["detail"]
        assert [n["ok"] for n in tcp["data"]["nodes"]] == [False, True, True]
        assert checks["cluster"]["status"] == "warn" and f"not running: {first}" in checks["cluster"]["detail"]
        quorum = checks["quorum"]
        assert quorum["status"] == "warn", quorum["detail"]
        row = queue_row(quorum)
        assert (row["online"], row["down"]) == (2, [first]) and row["leader"] in (second, third)
        # Stopping either remaining member would lose the quorum: rabbitmq-queues says so, naming the queue.
        assert sorted(quorum["data"]["critical"]) == sorted([second, third])
        assert f"would lose the quorum of {QUEUE}" in quorum["detail"]
        assert checks["local_node"]["status"] == "ok"  # asks a running member

        local_cluster.stop(2)
        code, checks = doctor(cli, local_cluster, url)
        assert code == 1
        quorum = checks["quorum"]
        assert quorum["status"] == "fail" and f"quorum lost: '{QUEUE}' 1/3 online, no leader" in quorum["detail"]
        assert "start the stopped members" in quorum["hint"]
        assert "1 of 3 nodes accept connections" in checks["tcp"]["detail"] and checks["tcp"]["status"] == "warn"
        assert checks["cluster"]["status"] == "warn"


def test_doctor_with_every_node_of_the_list_down_fails(cli: CliRun) -> None:
    from celeryctl.rabbitmq.node import pick_free_port

    used: set[int] = set()
    ports = [pick_free_port([], used) for _ in range(2)]
    used.update(ports)
    url = ";".join(build_amqp_url("guest", "guest", "127.0.0.1", p, "/") for p in ports)
    res = cli("doctor", "--json", "--broker", url)
    assert res.returncode == 1 and "Traceback" not in res.output
    checks = {c["name"]: c for c in res.json()["checks"]}
    tcp = checks["tcp"]
    assert tcp["status"] == "fail" and tcp["detail"].startswith(
        "none of the 2 nodes of the URL list accepts connections"
    )
    assert [n["kind"] for n in tcp["data"]["nodes"]] == ["refused", "refused"]
    assert checks["handshake"]["status"] == "skip" and checks["compat"]["status"] == "skip"


def _leader(local_cluster: LocalCluster, member: int) -> str | None:
    rows = local_cluster.runner(member).json("list_queues", "-p", VHOST, "name", "leader", "--formatter", "json")
    return next((str(r["leader"]) for r in rows if r["name"] == QUEUE), None)


# --------------------------------------------------------------------------- compatibility, as a table


def _said(problems: list[Any]) -> str:
    return " | ".join(f"{p.status}: {p.message}" for p in problems)


@pytest.mark.parametrize(
    ("server", "celery", "kombu", "app", "expect"),
    [
        # Nothing known to break.
        ("3.10.8", "5.4.0", "5.4.2", None, []),
        ("3.13.7", "5.7.0", "5.7.0", CELERY_57, []),
        ("4.3.0", "5.7.0", "5.7.0", CELERY_57, []),
        ("4.3.0", "5.6.3", "5.7.0", AppSettings(True, True, True, True), []),
        # 4.3 refuses transient non-exclusive queues: celery < 5.6 has no way out but the rabbitmq.conf key.
        ("4.3.0", "5.5.3", "5.7.0", CELERY_57, ["celery 5.5.3 declares its remote-control and event queues"]),
        # 5.6 has the settings, off by default: named.
        ("4.3.0", "5.6.3", "5.7.0", AppSettings(), ["control_queue_exclusive and event_queue_exclusive off"]),
        ("4.3.1", "5.7.0", "5.7.0", AppSettings(control_queue_exclusive=False), ["control_queue_exclusive off"]),
        # rpc:// before 5.7: a transient reply queue.
        ("4.3.0", "5.6.3", "5.7.0", AppSettings(True, True, rpc_backend=True), ["rpc:// result backend"]),
        # 4.0-4.2 allow them still (deprecated): warned that 4.3 refuses them.
        ("4.1.0", "5.5.0", "5.7.0", CELERY_57, ["RabbitMQ 4.3 refuses (this is 4.1.0, deprecated)"]),
        # Global QoS: kombu < 5.7 asks for it unless celery >= 5.5 sees a quorum queue.
        ("4.3.0", "5.7.0", "5.6.2", CELERY_57, ["kombu 5.6.2 makes the worker ask for global QoS"]),
        ("4.3.0", "5.7.0", "5.6.2", AppSettings(quorum_queues=True), []),
        ("4.3.0", "5.7.0", "5.6.2", AppSettings(worker_detect_quorum_queues=False, quorum_queues=True), ["is off"]),
        (
            "4.3.0",
            "5.4.0",
            "5.4.0",
            AppSettings(quorum_queues=True),
            ["celery 5.4.0 declares", "worker_detect_quorum_queues came in 5.5"],
        ),
        # 3.x: none of the 4.3 refusals apply.
        ("3.13.7", "5.4.0", "5.4.0", AppSettings(), []),
    ],
)
def test_compat_problems_by_version(
    server: str, celery: str, kombu: str, app: AppSettings | None, expect: list[str]
) -> None:
    problems = compat_problems(server, celery, kombu, app, [])
    said = _said(problems)
    assert len(problems) == len(expect), said
    for text in expect:
        assert text in said
    assert all(p.status == "warn" and p.hint for p in problems)


@pytest.mark.parametrize(
    ("server", "status"), [("3.10.8", "warn"), ("3.13.7", "warn"), ("4.0.5", "fail"), ("4.3.0", "fail")]
)
def test_a_mirroring_policy_fails_on_4x_and_warns_on_3x(server: str, status: str) -> None:
    policies = [
        {"name": "ha-all", "definition": '{"ha-mode": "all", "ha-sync-mode": "automatic"}'},  # rabbitmqctl: text
        {"name": "ttl", "definition": {"message-ttl": 1000}},  # the API: an object
    ]
    assert ha_policy_names(policies) == ["ha-all"]
    problems = compat_problems(server, "5.7.0", "5.7.0", CELERY_57, ha_policy_names(policies))
    assert [p.status for p in problems] == [status]
    assert "policy ha-all mirrors classic queues (ha-mode)" in problems[0].message and server in problems[0].message
    assert "convert-queue QUEUE --to quorum" in problems[0].hint


# --------------------------------------------------------------------------- the checks from a view (any source)


def _view(online: list[str], *, classic: bool = False, partitions: list[str] | None = None) -> ClusterView:
    """What the management API would say of a 3-node cluster with a quorum queue 'q'."""
    nodes = ["rabbit@a", "rabbit@b", "rabbit@c"]
    queues: list[dict[str, Any]] = [
        {"name": "q", "type": "quorum", "durable": True, "leader": online[0], "members": nodes, "online": online}
    ]
    if classic:
        queues.append({"name": "old", "type": "classic", "durable": True, "exclusive": False, "auto_delete": False})
        queues.append({"name": "celeryev.x", "type": "classic", "durable": False, "auto_delete": True})
    view = ClusterView("management API", [{"name": n, "running": n in online} for n in nodes], partitions or [])
    view.queues = queues
    view.critical = critical_members(queues)
    return view


def test_quorum_and_members_checks_from_a_view() -> None:
    whole = quorum_check(_view(["rabbit@a", "rabbit@b", "rabbit@c"]), "/")
    assert whole.status == "ok" and "'q' 3/3 online, leader rabbit@a" in whole.detail
    one_down = quorum_check(_view(["rabbit@a", "rabbit@b"]), "/")
    assert one_down.status == "warn" and one_down.data["critical"] == {"rabbit@a": ["q"], "rabbit@b": ["q"]}
    assert "start rabbit@c" in (one_down.hint or "")
    two_down = quorum_check(_view(["rabbit@a"]), "/")
    assert two_down.status == "fail" and "quorum lost: 'q' 1/3 online, no leader" in two_down.detail
    assert two_down.data["critical"] == {}  # already lost: no "would lose" warning
    classic = quorum_check(_view(["rabbit@a", "rabbit@b", "rabbit@c"], classic=True), "/")
    assert classic.status == "warn" and classic.data["classic"] == ["old"]  # Celery's transient queues are not named
    assert classic.hint == "replicate it: celeryctl convert-queue old --to quorum"
    assert members_check(_view(["rabbit@a", "rabbit@b"])).status == "warn"
    assert members_check(_view(["rabbit@a"], partitions=["rabbit@c"])).status == "fail"
