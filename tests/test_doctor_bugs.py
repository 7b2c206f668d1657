"""doctor tells its own bugs from the setup's faults.

A check that raises something doctor does not expect is a bug in celeryctl: it must reach the
CLI's boundary (exit 70, error code "internal"), never be dressed up as a verdict about the
broker.  An expected failure (the broker refusing the ping) is still a verdict.  The checks'
functions are replaced inside a child process (``python -c``) that runs the real CLI against
the session's RabbitMQ node.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RabbitNode

REPO = Path(__file__).resolve().parent.parent

RUN = """
import sys
import celeryctl.doctor.app as checks
{patch}
from celeryctl.cli import main
main(sys.argv[1:])
"""


def run_patched(rabbit: RabbitNode, cwd: Path, patch: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_"))}
    env.update(
        CELERYCTL_BROKER_URL=rabbit.url,
        CELERYCTL_DATA_DIR=str(rabbit.data_dir),
        CELERYCTL_PING_TIMEOUT="0.2",
        PYTHONPATH=str(REPO),
        COLUMNS="200",
    )
    return subprocess.run(
        [sys.executable, "-c", RUN.format(patch=patch), "doctor", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


BOOM = """
def boom(*args, **kwargs):
    raise RuntimeError("boom")
checks.check_workers = boom
"""

REFUSED = """
from amqp.exceptions import AccessRefused
def refused(*args, **kwargs):
    raise AccessRefused("access to exchange 'celery.pidbox' refused")
checks.ping_workers = refused
"""


def test_a_bug_inside_a_check_is_exit_70_not_a_verdict(rabbit: RabbitNode, tmp_path: Path) -> None:
    proc = run_patched(rabbit, tmp_path, BOOM, "--json")
    assert proc.returncode == 70, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)  # exactly one document
    assert doc["ok"] is False
    assert doc["error"]["code"] == "internal"
    assert doc["error"]["message"] == "unexpected error: RuntimeError: boom"
    assert "checks" not in doc
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_bug_inside_a_check_says_so_in_the_table_mode(rabbit: RabbitNode, tmp_path: Path) -> None:
    proc = run_patched(rabbit, tmp_path, BOOM)
    assert proc.returncode == 70, proc.stdout + proc.stderr
    assert "unexpected error: RuntimeError: boom" in proc.stderr
    assert "this is a bug" in proc.stderr
    for verdict in ("TCP connection", "workers", "healthy", "FAILED", "ping could not be sent"):
        assert verdict not in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_the_broker_refusing_the_ping_is_still_a_verdict(rabbit: RabbitNode, tmp_path: Path) -> None:
    proc = run_patched(rabbit, tmp_path, REFUSED, "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    workers = checks["workers"]
    assert workers["status"] == "fail"
    assert workers["detail"].startswith("the ping could not be sent: AccessRefused:")
    assert "celery.pidbox" in workers["hint"]
    assert checks["permissions"]["status"] == "ok"
    assert "Traceback" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- the timeouts are settings


@pytest.fixture
def refused_url() -> str:
    """A port nothing listens on: doctor's verdict comes in well under a second."""
    from celeryctl.rabbitmq.node import pick_free_port

    return f"amqp://guest:guest@127.0.0.1:{pick_free_port([], set())}//"


def doctor_json(tmp_path: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_"))}
    base.update(CELERYCTL_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO), **env)
    proc = subprocess.run(
        [sys.executable, "-m", "celeryctl", "doctor", "--json", *args],
        capture_output=True,
        text=True,
        env=base,
        cwd=tmp_path,
        timeout=60,
    )
    assert "Traceback" not in proc.stdout + proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def settings_of(doc: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = doc["checks"][0]["data"]
    return data


def test_doctor_timeouts_flag_over_env_over_file(tmp_path: Path, refused_url: str) -> None:
    (tmp_path / "celeryctl.toml").write_text("doctor_timeout = 3.5\nping_timeout = 0.7\n")
    data = settings_of(doctor_json(tmp_path, {"CELERYCTL_BROKER_URL": refused_url}))
    assert (data["doctor_timeout"], data["ping_timeout"]) == (3.5, 0.7)
    assert data["sources"]["ping_timeout"] == f"file {tmp_path / 'celeryctl.toml'}"

    env = {"CELERYCTL_BROKER_URL": refused_url, "CELERYCTL_DOCTOR_TIMEOUT": "1.5", "CELERYCTL_PING_TIMEOUT": "0.4"}
    data = settings_of(doctor_json(tmp_path, env))
    assert (data["doctor_timeout"], data["ping_timeout"]) == (1.5, 0.4)
    assert data["sources"]["doctor_timeout"] == "env CELERYCTL_DOCTOR_TIMEOUT"

    data = settings_of(doctor_json(tmp_path, env, "--timeout", "0.5", "--ping-timeout", "0.3"))
    assert (data["doctor_timeout"], data["ping_timeout"]) == (0.5, 0.3)
    assert data["sources"]["doctor_timeout"] == "flag doctor --timeout"
    assert data["sources"]["ping_timeout"] == "flag doctor --ping-timeout"


def test_doctor_verbose_names_the_timeouts_sources(tmp_path: Path, refused_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_"))}
    env.update(
        CELERYCTL_DATA_DIR=str(tmp_path / "data"),
        CELERYCTL_BROKER_URL=refused_url,
        CELERYCTL_PING_TIMEOUT="0.4",
        PYTHONPATH=str(REPO),
        COLUMNS="200",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "celeryctl", "doctor", "-v", "--timeout", "0.5"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "doctor_timeout from flag doctor --timeout" in proc.stdout
    assert "ping_timeout from env CELERYCTL_PING_TIMEOUT" in proc.stdout


def test_a_timeout_that_is_not_a_number_fails_the_settings_check(tmp_path: Path, refused_url: str) -> None:
    doc = doctor_json(tmp_path, {"CELERYCTL_BROKER_URL": refused_url, "CELERYCTL_DOCTOR_TIMEOUT": "soon"})
    assert doc["ok"] is False
    settings = doc["checks"][0]
    assert settings["status"] == "fail"
    assert "doctor_timeout (from env CELERYCTL_DOCTOR_TIMEOUT) must be a number of seconds" in settings["detail"]
