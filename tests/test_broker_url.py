"""The one broker URL parser (celeryctl.broker) and the settings that used to bypass the settings table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from celeryctl.broker import BrokerUrl, app_queue_names, is_loopback, mask_url, url_password
from celeryctl.errors import ConfigError
from celeryctl.settings import load_settings


def test_one_url_is_parsed_as_kombu_reads_it() -> None:
    b = BrokerUrl.parse("amqp://celery:p%40ss@Broker.example:5673/my%2Fvhost")
    assert (b.scheme, b.host, b.port, b.user, b.password, b.vhost) == (
        "amqp",
        "broker.example",  # host names are case-insensitive: kept lower-case
        5673,
        "celery",
        "p@ss",
        "my/vhost",
    )
    assert b.masked == "amqp://celery:****@Broker.example:5673/my%2Fvhost"  # as written
    assert BrokerUrl.parse("amqp://guest:guest@localhost//").vhost == "/"
    assert BrokerUrl.parse("amqp://guest:guest@localhost/%2F").vhost == "/"
    assert BrokerUrl.parse("amqp://h").vhost == "/"
    assert BrokerUrl.parse("amqps://h").port == 5671
    assert BrokerUrl.parse("pyamqp://h").port == 5672
    # "//" and "/%2F" are the same login
    assert BrokerUrl.parse("amqp://u:p@h//").key == BrokerUrl.parse("amqp://u:p@h:5672/%2F").key


def test_a_failover_list_keeps_every_host() -> None:
    b = BrokerUrl.parse("amqp://u:secret@h1:5672/v;amqp://u:secret@h2:5673/v")
    assert [(h.host, h.port) for h in b.hosts] == [("h1", 5672), ("h2", 5673)]
    assert (b.host, b.port, b.user, b.vhost) == ("h1", 5672, "u", "v")
    assert b.masked == "amqp://u:****@h1:5672/v;amqp://u:****@h2:5673/v"
    assert "secret" not in mask_url(b.raw)
    assert BrokerUrl.parse(["amqp://h1", "amqp://h2"]).raw == "amqp://h1;amqp://h2"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://localhost", "has scheme 'redis', expected amqp:// or amqps://"),
        ("localhost:5672", "has scheme 'localhost', expected amqp:// or amqps://"),
        ("amqp://", "has no host"),
        ("amqp://h:99999/", "is invalid: Port out of range 0-65535"),
        ("", "is empty"),
    ],
)
def test_bad_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        BrokerUrl.parse(url, "flag --broker")
    assert err.value.message == f"broker URL (from flag --broker) {message}"
    assert err.value.hint == "use amqp://USER:PASSWORD@HOST:PORT/VHOST"


def test_loopback_and_node_identity() -> None:
    assert [is_loopback(h) for h in ("localhost", "127.0.0.2", "::1", "[::1]", "10.0.0.1", "example.com")] == [
        True,
        True,
        True,
        True,
        False,
        False,
    ]

    class Info:
        port = 5673

    assert BrokerUrl.parse("amqp://guest:guest@127.0.0.1:5673/%2F").is_node(Info())  # type: ignore[arg-type]
    assert not BrokerUrl.parse("amqp://guest:guest@127.0.0.1:5672/%2F").is_node(Info())  # type: ignore[arg-type]
    assert not BrokerUrl.parse("amqp://guest:guest@10.1.1.1:5673/%2F").is_node(Info())  # type: ignore[arg-type]
    assert not BrokerUrl.parse("amqp://h").is_node(None)


def test_url_password_reads_the_first_url() -> None:
    assert url_password("amqp://u:a%3Ab@h1;amqp://u:other@h2") == "a:b"
    assert url_password("amqp://u@h") is None


@pytest.mark.filterwarnings("ignore::celery.exceptions.CDeprecationWarning")  # the task's own queue option is still read
def test_app_queue_names_count_routes_queues_and_task_options() -> None:
    from celery import Celery
    from kombu import Queue

    app = Celery("q", set_as_current=False)
    app.conf.task_default_queue = "default"
    app.conf.task_queues = [Queue("default"), Queue("high")]
    app.conf.task_routes = {"q.report": {"queue": "reports"}, "q.mail": "mail"}

    @app.task(queue="own", shared=False)
    def t() -> None: ...

    assert app_queue_names(app) == ["default", "high", "reports", "mail", "own"]


def test_settings_that_were_read_from_the_environment_have_keys(tmp_path: Path) -> None:
    config = tmp_path / "celeryctl.toml"
    config.write_text('doctor_timeout = 5\nping_timeout = "0.5"\nrabbitmq_bin_dir = "/opt/rmq/bin"\n')
    config.chmod(0o600)
    s = load_settings({}, config=config, env={}, cwd=tmp_path)
    assert (s.doctor_timeout, s.ping_timeout, s.rabbitmq_bin_dir) == (5.0, 0.5, Path("/opt/rmq/bin"))
    assert s.sources["doctor_timeout"] == f"file {config}"
    # flag > env > file > default
    env = {"CELERYCTL_DOCTOR_TIMEOUT": "3", "CELERYCTL_FLOWER_BASIC_AUTH": "admin:pw"}
    s = load_settings({"doctor_timeout": 7.0}, config=config, env=env, cwd=tmp_path)
    assert (s.doctor_timeout, s.sources["doctor_timeout"]) == (7.0, "flag doctor --timeout")
    s = load_settings({}, config=config, env=env, cwd=tmp_path)
    assert (s.doctor_timeout, s.sources["doctor_timeout"]) == (3.0, "env CELERYCTL_DOCTOR_TIMEOUT")
    assert s.flower_basic_auth == "admin:pw" and s.to_dict()["flower_basic_auth"] == "****"
    default = load_settings({}, env={}, cwd=tmp_path / "nowhere")
    assert (default.doctor_timeout, default.ping_timeout, default.sources["ping_timeout"]) == (2.0, 1.0, "default")


def test_a_timeout_that_is_not_a_number_is_exit_3(tmp_path: Path) -> None:
    env = {"CELERYCTL_PING_TIMEOUT": "soon", "CELERYCTL_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "celeryctl", "doctor", "--json"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    settings_check = next(c for c in json.loads(proc.stdout)["checks"] if c["name"] == "settings")
    assert settings_check["status"] == "fail"
    assert (
        settings_check["detail"]
        == "ping_timeout (from env CELERYCTL_PING_TIMEOUT) must be a number of seconds, got 'soon'"
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_root_config_reaches_the_command(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text('broker_url = "amqp://u:pw@127.0.0.1:1/v"\nping_timeout = 0.2\n')
    config.chmod(0o600)
    env = {"CELERYCTL_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "celeryctl", "--config", str(config), "doctor", "--json", "-v"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    doc = json.loads(proc.stdout)
    settings_check = next(c for c in doc["checks"] if c["name"] == "settings")
    assert settings_check["data"]["broker_url"] == "amqp://u:****@127.0.0.1:1/v"
    assert settings_check["data"]["sources"]["ping_timeout"] == f"file {config}"
