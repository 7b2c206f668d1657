"""Fixtures of the fault suite: a broker node of its own (it gets killed), the ledger of what ran."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from celeryctl.rabbitmq.node import Node, NodeInfo, pick_free_port
from tests.conftest import STOP_IN_BACKGROUND, wait_for

HERE = Path(__file__).parent
#: ``-A`` for the fault app, run from the repository root (``cwd=ROOT``).
FAULT_APP = "tests.faults.faultapp"
ROOT = HERE.parent.parent


@dataclass
class FaultNode:
    """A private RabbitMQ node that a test may stop, start and SIGKILL."""

    node: Node
    info: NodeInfo

    @property
    def url(self) -> str:
        return self.info.url

    def kill(self) -> None:
        """SIGKILL the broker (no clean shutdown), and wait until its port is closed."""
        assert self.info.pid is not None
        os.kill(self.info.pid, signal.SIGKILL)
        wait_for(lambda: not _port_open(self.info.port), timeout=30, what="the killed node's port to close")

    def stop(self) -> None:
        self.node.stop()

    def start(self) -> None:
        self.info, _ = self.node.start(self.info.port)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def fault_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultNode]:
    """A node of this module's own (tests that kill or restart the broker cannot share the session's)."""
    node = Node(tmp_path_factory.mktemp("fault-node") / "node")
    info, _ = node.start(pick_free_port([], set()))
    fault = FaultNode(node, info)
    try:
        yield fault
    finally:
        STOP_IN_BACKGROUND(node.stop, f"the fault node {node.dir}")


class Ledger:
    """What the workers completed, read from the file the fault app appends to."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def env(self) -> dict[str, str]:
        return {"FAULT_LEDGER": str(self.path)}

    def counts(self) -> Counter[str]:
        if not self.path.exists():
            return Counter()
        return Counter(line for line in self.path.read_text().splitlines() if line)

    def done(self) -> set[str]:
        return set(self.counts())

    def duplicates(self) -> dict[str, int]:
        return {k: n for k, n in self.counts().items() if n > 1}

    def report(self, submitted: list[str] | set[str]) -> dict[str, int]:
        """submitted / completed / lost / duplicated, counted on the worker's side."""
        done = self.done()
        wanted = set(submitted)
        return {
            "submitted": len(wanted),
            "completed": len(done & wanted),
            "lost": len(wanted - done),
            "duplicated": len(self.duplicates()),
        }


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.txt")
