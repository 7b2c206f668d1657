"""celeryctl demo against the session's node: broker reused, worker started and stopped."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CliRun, RabbitNode


def test_demo_runs_the_tutorial_end_to_end(cli: CliRun, rabbit: RabbitNode) -> None:
    env = {"CELERYCTL_DATA_DIR": str(rabbit.data_dir)}
    r = cli("demo", "--seconds", "1", env=env)
    assert r.returncode == 0, r.output
    assert r.stdout.strip() == "3"
    assert "PROGRESS 1/1" in r.stderr and "SUCCESS" in r.stderr
    # the broker URL is shown masked (the demo provisions its own user since 8e9dd4a)
    assert ":****@" in r.stderr, r.stderr
    assert "guest:guest@" not in r.output
    log = (rabbit.data_dir / "demo-worker.log").read_text()
    assert "celeryctl.demo.longtime_add" in log
    assert "warm shutdown" in log.lower()  # stopped with SIGTERM, warmly


def test_demo_json(cli: CliRun, rabbit: RabbitNode) -> None:
    r = cli("demo", "--seconds", "0", "--json", env={"CELERYCTL_DATA_DIR": str(rabbit.data_dir)})
    assert r.returncode == 0, r.output
    doc = r.json()
    assert doc["ok"] is True and doc["result"] == 3 and doc["node_started"] is False
    assert doc["task"] == "celeryctl.demo.longtime_add"


def test_demo_starts_the_private_node_when_none_runs(cli: CliRun, tmp_path: Path) -> None:
    from celeryctl.rabbitmq.node import Node, pick_free_port

    data = tmp_path / "fresh"
    try:
        r = cli(
            "demo",
            "--seconds",
            "0",
            "--json",
            "--port",
            str(pick_free_port([], set())),
            env={"CELERYCTL_DATA_DIR": str(data)},
        )
        assert r.returncode == 0, r.output
        doc = r.json()
        assert doc["node_started"] is True and doc["result"] == 3
        assert Node(data / "node").running_info() is not None  # the broker keeps running
    finally:
        Node(data / "node").stop()
