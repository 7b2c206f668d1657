"""The cluster suite's fixture: one real 3-node local cluster per session, started by the real
``celeryctl broker start --nodes 3`` on free ports in a temp dir, shared by every test here.

A test that stops or kills members must give the cluster back whole: ``with local_cluster.down(2):``
(or call ``heal()`` in a ``finally``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from celeryctl.probe import port_is_free
from celeryctl.rabbitmq.cluster import Cluster
from celeryctl.rabbitmq.ctl import Runner
from celeryctl.rabbitmq.node import NodeInfo, pick_free_port
from tests.conftest import STOP_IN_BACKGROUND, _ensure_rabbitmq_installed, wait_for

NODES = 3


@dataclass
class LocalCluster:
    """celeryctl's 3-node cluster under ``data_dir`` (use ``env`` to make it celeryctl's default)."""

    data_dir: Path
    start_doc: dict[str, Any]  # what ``broker start --nodes 3 --json`` printed
    cluster: Cluster = field(init=False)

    def __post_init__(self) -> None:
        self.cluster = Cluster(self.data_dir)

    @property
    def env(self) -> dict[str, str]:
        """CELERYCTL_DATA_DIR that makes this cluster celeryctl's node (its broker URL the list)."""
        return {"CELERYCTL_DATA_DIR": str(self.data_dir)}

    @property
    def infos(self) -> list[NodeInfo]:
        return self.cluster.infos()

    @property
    def url(self) -> str:
        """Every member's guest URL, ``;``-separated (Celery's failover list)."""
        url = self.cluster.url()
        assert url is not None
        return url

    def member_url(self, index: int) -> str:
        """Member ``index``'s (1-based) own guest URL."""
        return self.infos[index - 1].url

    def runner(self, index: int = 1) -> Runner:
        return self.cluster.members[index - 1].runner()

    def kill(self, index: int) -> None:
        """SIGKILL member ``index``'s Erlang VM (no clean shutdown); wait until its AMQP port closes."""
        node = self.cluster.members[index - 1]
        info = node.running_info()
        assert info is not None and info.pid is not None, f"member {index} is not running"
        os.kill(info.pid, signal.SIGKILL)
        wait_for(lambda: port_is_free(info.port), timeout=30, what=f"member {index}'s port to close")

    def stop(self, index: int) -> None:
        """Stop member ``index`` cleanly (the others keep running, with the shared epmd)."""
        self.cluster.members[index - 1].stop()

    def heal(self) -> None:
        """Start every member that is down (together: they wait for each other) and wait until all run."""
        self.cluster.start()
        wait_for(lambda: len(self.cluster.status().running) == NODES, timeout=60, what="every member to run")

    @contextmanager
    def down(self, *indexes: int, kill: bool = False) -> Iterator[None]:
        """Members ``indexes`` stopped (or SIGKILLed) for the ``with`` block, then healed."""
        try:
            for index in indexes:
                (self.kill if kill else self.stop)(index)
            yield
        finally:
            self.heal()


def start_cluster(data_dir: Path, nodes: int = NODES) -> dict[str, Any]:
    """``celeryctl broker start --nodes N --json`` on free ports below 32768 (ports PORT..PORT+N-1)."""
    # In random order: two sessions at once (helpers, xdist workers) must not both take the first.
    bases = random.sample(range(11000, 12700, 17), 100)
    port = pick_free_port([p for p in bases if all(port_is_free(p + i) for i in range(nodes))], set())
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYCTL_")}
    proc = subprocess.run(
        [sys.executable, "-m", "celeryctl", "broker", "start", "--nodes", str(nodes), "--port", str(port), "--json"],
        capture_output=True,
        text=True,
        env={**env, "CELERYCTL_DATA_DIR": str(data_dir)},
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A running 3-node local cluster shared by the cluster tests, stopped at the end."""
    _ensure_rabbitmq_installed()
    data_dir = tmp_path_factory.mktemp("celeryctl-cluster")
    doc = start_cluster(data_dir)
    found = LocalCluster(data_dir, doc)
    try:
        yield found
    finally:
        STOP_IN_BACKGROUND(found.cluster.stop, "the local cluster")
