"""A queue named only by ``task_routes`` is the app's queue for status, queues and top, as for doctor.

The app routes ``<module>.report`` to ``reports`` and names that queue nowhere else.  One task sent
to it (no worker) leaves one ready message.  Through rabbitmqctl (celeryctl's node) every queue of
the vhost is listed anyway; the regression is the AMQP path (another broker), where only the app's
queue names are looked up: there ``reports`` was missing from status, queues and top.
"""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliRun, RabbitNode, VhostFactory, wait_for

UID = uuid.uuid4().hex[:8]
MODULE = f"routedapp_{UID}"
QUEUE = "reports"

APP_SOURCE = """
from celery import Celery

app = Celery({module!r}, broker={broker!r}, backend="rpc://")
app.conf.broker_connection_retry_on_startup = False
app.conf.task_routes = {{{task!r}: {{"queue": {queue!r}}}}}


@app.task
def report():
    return "done"
"""


@dataclass
class Env:
    rabbit: RabbitNode
    url: str
    vhost: str
    appdir: Path

    def cli_env(self, *, own_node: bool) -> dict[str, str]:
        """``own_node``: the session node is celeryctl's (rabbitmqctl); else another broker (AMQP)."""
        env = {"PYTHONPATH": os.pathsep.join([str(self.appdir), os.environ.get("PYTHONPATH", "")])}
        if own_node:
            env["CELERYCTL_DATA_DIR"] = str(self.rabbit.data_dir)
        return env


@pytest.fixture(scope="module")
def env(rabbit: RabbitNode, make_vhost: VhostFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    from celeryctl.broker import queue_depth

    vhost = make_vhost("routed")
    url = vhost.url
    appdir = tmp_path_factory.mktemp("routedapp")
    source = APP_SOURCE.format(module=MODULE, broker=url, task=f"{MODULE}.report", queue=QUEUE)
    (appdir / f"{MODULE}.py").write_text(source)
    sys.path.insert(0, str(appdir))
    app: Any = None
    try:
        app = importlib.import_module(MODULE).app
        app.send_task(f"{MODULE}.report")  # routed by task_routes: declares 'reports' and publishes to it
        wait_for(lambda: queue_depth(url, QUEUE).ready == 1, timeout=10, what="the routed task in 'reports'")
        yield Env(rabbit, url, vhost.name, appdir)
    finally:
        if app is not None:
            app.close()
        sys.path.remove(str(appdir))
        sys.modules.pop(MODULE, None)


def _routed(queues: list[dict[str, Any]]) -> dict[str, Any]:
    found = [q for q in queues if q["name"] == QUEUE]
    assert len(found) == 1, queues
    return found[0]


@pytest.mark.parametrize(("own_node", "source"), [(True, "rabbitmqctl"), (False, "amqp")])
def test_status_lists_the_routed_queue(cli: CliRun, env: Env, own_node: bool, source: str) -> None:
    r = cli("status", "--json", "-A", MODULE, env=env.cli_env(own_node=own_node))
    assert r.returncode == 0, r.output
    doc = r.json()
    assert doc["queue_source"] == source and doc["vhost"] == env.vhost
    q = _routed(doc["queues"])
    assert (q["ready"], q["consumers"], q["messages"]) == (1, 0, 1)
    assert q["unacked"] == (0 if own_node else None)
    human = cli("status", "-A", MODULE, env=env.cli_env(own_node=own_node))
    assert human.returncode == 0, human.output
    assert QUEUE in human.stdout


@pytest.mark.parametrize(("own_node", "source"), [(True, "rabbitmqctl"), (False, "amqp")])
def test_queues_lists_the_routed_queue(cli: CliRun, env: Env, own_node: bool, source: str) -> None:
    r = cli("queues", "--json", "-A", MODULE, env=env.cli_env(own_node=own_node))
    assert r.returncode == 0, r.output
    doc = r.json()
    assert doc["source"] == source and doc["vhost"] == env.vhost and doc["missing"] == []
    q = _routed(doc["queues"])
    assert (q["ready"], q["unacked"], q["consumers"], q["messages"]) == (1, 0 if own_node else None, 0, 1)


@pytest.mark.parametrize("own_node", [True, False])
def test_top_shows_the_routed_queue(cli: CliRun, env: Env, own_node: bool) -> None:
    r = cli("top", "--json", "--duration", "0.5", "-A", MODULE, env=env.cli_env(own_node=own_node))
    assert r.returncode == 0, r.output
    q = _routed(r.json()["queues"])
    assert (q["ready"], q["unacked"], q["consumers"], q["messages"]) == (1, 0 if own_node else None, 0, 1)
    snapshot = cli("top", "--duration", "0.5", "-A", MODULE, env=env.cli_env(own_node=own_node))
    assert snapshot.returncode == 0, snapshot.output
    assert QUEUE in snapshot.stdout


def test_doctor_lists_the_routed_queue(cli: CliRun, env: Env) -> None:
    """The reference: doctor always looked the app's routes up."""
    r = cli("doctor", "--json", "-A", MODULE, env=env.cli_env(own_node=False))
    assert "Traceback" not in r.output
    checks = {c["name"]: c for c in r.json()["checks"]}
    q = _routed(checks["queues"]["data"]["queues"])
    assert (q["exists"], q["messages"], q["consumers"]) == (True, 1, 0)
    assert checks["queues"]["status"] == "warn" and f"'{QUEUE}' (1)" in checks["queues"]["detail"]
