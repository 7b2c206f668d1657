"""Failover everywhere: with member 1 killed, every command given the cluster's URL list still
works; with every member down, one line naming each host (exit 6), no traceback, nothing sent.
One heal for the module (a heal costs ~10 s)."""

from __future__ import annotations

from tests.cluster.conftest import LocalCluster
from tests.conftest import CliRun


def test_failover_then_every_member_down(local_cluster: LocalCluster, cli: CliRun) -> None:
    env = {**local_cluster.env, "CELERYCTL_BROKER_URL": local_cluster.url}
    ports = [str(info.port) for info in local_cluster.infos]
    with local_cluster.down(1, kill=True):
        sent = cli("submit", "add", "1", "2", "--json", env=env)
        assert sent.returncode == 0, sent.output
        assert sent.json()["ok"] is True
        for args in (("status", "--json"), ("queues", "--json"), ("top", "--json", "--duration", "0.5")):
            result = cli(*args, env=env)
            assert result.returncode == 0, (args, result.output)
            assert "Traceback" not in result.output
            result.json()
        # broker status names the member that is down (exit 6), in text and in --json.
        first = local_cluster.infos[0].name
        status = cli("broker", "status", "--json", env=local_cluster.env)
        assert status.returncode == 6
        err = status.json()["error"]
        assert err["message"] == f"2 of 3 cluster members run; down: {first}"
        assert [m["running"] for m in err["details"]["members"]] == [False, True, True]
        text = cli("broker", "status", env=local_cluster.env)
        assert text.returncode == 6 and f"down: {first}" in text.stderr and "celeryctl broker start" in text.stderr
        assert "Traceback" not in text.output
        # The queue submit declared is a quorum queue with a replica on every member.
        listed = local_cluster.runner(2).json("list_queues", "name", "members", "type")
        queue = next(q for q in listed if q["name"] == "celery")
        assert queue["type"] == "quorum" and len(queue["members"]) == 3, queue

        local_cluster.kill(2)
        local_cluster.kill(3)
        for args in (("submit", "add", "1", "2"), ("status",), ("queues",)):
            result = cli(*args, env=env)
            assert result.returncode == 6, (args, result.output)
            assert "Traceback" not in result.output
            assert all(f"127.0.0.1:{port}" in result.stderr for port in ports), result.stderr
            if args[0] == "submit":
                assert "nothing was submitted" in result.stderr
        status = cli("broker", "status", env=local_cluster.env)
        assert status.returncode == 6 and "3-node cluster" in status.stderr and "is not running" in status.stderr
