"""Shared fixtures: one real private RabbitMQ node per test session, and a CLI runner.

The node is started through celeryctl's own node module on free ports below 32768 in a temp
dir, and stopped at the end.  No test touches a system RabbitMQ on 5672.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from celeryctl.rabbitmq.ctl import Runner, find_bin_dir
from celeryctl.rabbitmq.node import Node, NodeInfo, pick_free_port

REPO = Path(__file__).resolve().parent.parent


def _ensure_rabbitmq_installed() -> None:
    if find_bin_dir() is not None:
        return
    if os.geteuid() == 0:  # never skip: install it (as the README's test command does)
        subprocess.run([sys.executable, "-m", "celeryctl", "broker", "install"], check=True)
    if find_bin_dir() is None:
        pytest.exit("RabbitMQ is not installed and cannot be installed without root: run `celeryctl broker install`", 4)


@dataclass
class RabbitNode:
    node: Node
    info: NodeInfo
    data_dir: Path  # CELERYCTL_DATA_DIR that makes this node celeryctl's default

    @property
    def url(self) -> str:
        return self.info.url

    @property
    def port(self) -> int:
        return self.info.port

    @property
    def name(self) -> str:
        return self.info.name

    def runner(self) -> Runner:
        return self.node.runner(self.info)


@pytest.fixture(scope="session")
def rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitNode]:
    """A running private RabbitMQ node shared by the whole session."""
    _ensure_rabbitmq_installed()
    data_dir = tmp_path_factory.mktemp("celeryctl-data")
    node = Node(data_dir / "node")
    port = pick_free_port([], set())
    info, _ = node.start(port)
    try:
        yield RabbitNode(node, info, data_dir)
    finally:
        node.stop()


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    argv: list[str]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> dict:  # type: ignore[type-arg]
        import json

        return json.loads(self.stdout)


CliRun = Callable[..., CliResult]


@pytest.fixture
def isolated_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no CELERYCTL_* leaking in, and a private data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYCTL_")}
    env["CELERYCTL_DATA_DIR"] = str(tmp_path / "data")
    env["COLUMNS"] = "200"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def cli(tmp_path: Path, isolated_env: dict[str, str]) -> CliRun:
    """Run the real ``celeryctl`` in a subprocess, from an empty working directory."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)

    def run(
        *args: str,
        env: dict[str, str] | None = None,
        input: str | None = None,
        cwd: Path | None = None,
        timeout: float = 120,
    ) -> CliResult:
        argv = [sys.executable, "-m", "celeryctl", *args]
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env={**isolated_env, **(env or {})},
            cwd=cwd or workdir,
            timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr, argv)

    return run


def wait_for(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> object:
    """Wait until ``condition()`` is truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)
