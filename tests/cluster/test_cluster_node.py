"""``celeryctl broker start --nodes 3 | status | stop`` on a real local 3-node cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeryctl.broker import BrokerUrl
from celeryctl.errors import ConfigError
from celeryctl.probe import amqp_handshake, port_is_free
from celeryctl.settings import load_settings
from tests.cluster.conftest import NODES, LocalCluster
from tests.conftest import CliRun


def test_start_prints_every_member_and_the_failover_url(local_cluster: LocalCluster) -> None:
    doc = local_cluster.start_doc
    assert doc["ok"] is True and doc["started"] is True
    assert [n["name"] for n in doc["nodes"]] == [i.name for i in local_cluster.infos]
    urls = doc["url"].split(";")
    assert len(urls) == NODES and all("guest:****@127.0.0.1:" in u for u in urls)
    for info in local_cluster.infos:  # every member answers AMQP, on loopback
        assert amqp_handshake("127.0.0.1", info.port, timeout=2.0).ok
    members = local_cluster.runner(2).json("cluster_status", "--formatter", "json")
    assert sorted(members["running_nodes"]) == sorted(i.name for i in local_cluster.infos)


def test_status_shows_each_member(cli: CliRun, local_cluster: LocalCluster) -> None:
    res = cli("broker", "status", "--json", env=local_cluster.env)
    assert res.returncode == 0, res.output
    doc = res.json()
    assert doc["nodes"] == NODES and doc["running"] == NODES and doc["partitions"] == []
    assert [m["port"] for m in doc["members"]] == [i.port for i in local_cluster.infos]
    assert all(m["running"] and m["pid"] and m["alarms"] == [] for m in doc["members"])
    assert "guest:****@" in doc["url"] and ":guest@" not in doc["url"]
    text = cli("broker", "status", env=local_cluster.env)
    assert text.returncode == 0
    for info in local_cluster.infos:
        assert info.name in text.stdout
    assert "partitions: none" in text.stdout


def test_stop_leaves_no_process_and_start_brings_every_member_back_with_its_data(
    cli: CliRun, local_cluster: LocalCluster
) -> None:
    import pika

    queue = "cluster-kept"
    params = BrokerUrl.parse(local_cluster.member_url(2)).pika_parameters(timeout=5)
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        ch.confirm_delivery()
        ch.basic_publish("", queue, b"kept", pika.BasicProperties(delivery_mode=2))
    try:
        res = cli("broker", "stop", "--json", env=local_cluster.env)
        assert res.returncode == 0 and res.json()["stopped"] is True and res.json()["nodes"] == NODES
        for node in local_cluster.cluster.members:
            assert node.processes(epmd=True) == []  # beam, children and the shared epmd
        assert all(port_is_free(i.port) for i in local_cluster.infos)
        assert cli("broker", "status", env=local_cluster.env).returncode == 6

        res = cli("broker", "start", "--json", env=local_cluster.env, timeout=240)
        assert res.returncode == 0, res.output
        doc = res.json()
        assert doc["started"] is True and len(doc["nodes"]) == NODES
    finally:
        local_cluster.heal()
    with pika.BlockingConnection(BrokerUrl.parse(local_cluster.member_url(3)).pika_parameters(timeout=5)) as conn:
        ch = conn.channel()
        assert ch.queue_declare(queue, passive=True).method.message_count == 1
        ch.queue_delete(queue)


def test_start_refuses_to_shrink_a_cluster(cli: CliRun, local_cluster: LocalCluster) -> None:
    res = cli("broker", "start", "--nodes", "1", env=local_cluster.env)
    assert res.returncode == 9
    assert "is a 3-node cluster, not 1" in res.stderr and "--nodes 3" in res.stderr
    res = cli("broker", "start", "--nodes", "9", env=local_cluster.env)
    assert res.returncode == 2 and "Traceback" not in res.output
    # already running: nothing started, every member listed
    res = cli("broker", "start", "--json", env=local_cluster.env)
    assert res.returncode == 0 and res.json()["started"] is False and len(res.json()["nodes"]) == NODES


def test_the_cluster_is_celeryctls_default_broker_as_a_failover_list(local_cluster: LocalCluster) -> None:
    settings = load_settings(env={"CELERYCTL_DATA_DIR": str(local_cluster.data_dir)}, cwd=local_cluster.data_dir)
    target = settings.broker_target
    assert [h.port for h in target.hosts] == [i.port for i in local_cluster.infos]
    assert settings.sources["broker_url"] == "celeryctl node"


def test_settings_file_takes_a_list_of_broker_urls(tmp_path: Path) -> None:
    path = tmp_path / "celeryctl.toml"
    path.write_text('broker_url = ["amqp://u:p@h1:5672/v", "amqp://u:p@h2:5673/v"]\n')
    path.chmod(0o600)
    settings = load_settings(env={}, cwd=tmp_path)
    assert settings.broker_url == "amqp://u:p@h1:5672/v;amqp://u:p@h2:5673/v"
    assert [str(h) for h in settings.broker_target.hosts] == ["h1:5672", "h2:5673"]
    assert settings.to_dict()["broker_url"] == "amqp://u:****@h1:5672/v;amqp://u:****@h2:5673/v"
    for bad in ("[]", '["amqp://u:p@h1:5672/v", 3]'):
        path.write_text(f"broker_url = {bad}\n")
        with pytest.raises(ConfigError) as caught:
            load_settings(env={}, cwd=tmp_path)
        assert "must be a URL or a non-empty array of URLs" in caught.value.message
