"""`celeryctl demo` provisions the broker as the tutorial's step 2 does, then runs the task."""

from __future__ import annotations

import stat
from pathlib import Path

from celeryctl.broker import url_password
from celeryctl.settings import load_settings
from tests.conftest import CliRun, RabbitNode


def test_demo_provisions_a_user_and_vhost_and_saves_the_url(cli: CliRun, rabbit: RabbitNode, tmp_path: Path) -> None:
    env = {"CELERYCTL_DATA_DIR": str(rabbit.data_dir)}
    work = tmp_path / "work"
    saved = work / "celeryctl.toml"

    first = cli("demo", "--seconds", "0", "--json", env=env)
    assert first.returncode == 0, first.output
    doc = first.json()
    assert doc["ok"] is True and doc["result"] == 3
    assert doc["setup"]["user"] == "celery" and doc["setup"]["vhost"] == "celery"
    assert doc["setup"]["saved_to"] == str(saved)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    url = load_settings(env={}, cwd=work).broker_url
    assert url is not None and url.startswith("amqp://celery:") and url.endswith(f":{rabbit.port}/celery")
    password = url_password(url)
    assert password and password not in first.output  # shown masked only
    users = {u["user"] for u in rabbit.runner().json("list_users")}
    assert "celery" in users
    perms = rabbit.runner().json("list_permissions", "-p", "celery")
    assert {"user": "celery", "configure": ".*", "write": ".*", "read": ".*"} in perms

    # Second run: the saved URL is the broker; nothing is provisioned again.
    again = cli("demo", "--seconds", "0", "--json", env=env)
    assert again.returncode == 0, again.output
    assert again.json()["setup"] is None and again.json()["result"] == 3
    assert load_settings(env={}, cwd=work).broker_url == url

    # The settings file is gone and the user's password is unknown: the demo replaces it.
    saved.unlink()
    third = cli("demo", "--seconds", "0", "--json", env=env)
    assert third.returncode == 0, third.output
    assert third.json()["setup"]["password_rotated"] is True
    new_url = load_settings(env={}, cwd=work).broker_url
    assert new_url and new_url != url
    assert "Traceback" not in first.output + again.output + third.output
