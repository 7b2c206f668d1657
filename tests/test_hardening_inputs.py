"""Hardening (issue 11), the inputs: broker URLs, durations and counts, queue names, the login
check of every command that names a broker, and plain placeholders in help.

Each case runs the real ``celeryctl`` and checks what a user sees: the exit code, the one line of
error, no traceback.  Cases that reach the broker use the session's real node.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from celeryctl.broker import BrokerUrl, build_amqp_url
from celeryctl.cli import app
from celeryctl.errors import ConfigError
from tests.conftest import CliResult, CliRun, RabbitNode, VhostFactory

LONG_LABEL = "a" * 64
LONG_QUEUE = "q" * 256
# Every command that takes --broker, with what it needs besides; ``--duration`` keeps ``top`` short.
BROKER_COMMANDS = {
    "submit": ["submit", "add", "1", "2"],
    "status": ["status"],
    "queues": ["queues"],
    "top": ["top", "--duration", "0.2"],
    "worker": ["worker"],
    "purge": ["purge", "celery", "--yes"],
    "flower": ["flower"],
}


def _usage_error(r: CliResult) -> str:
    """The usage error as one line of text (click draws it in a box, wrapped)."""
    assert r.returncode == 2, r.output
    assert "Traceback" not in r.output, r.output
    return " ".join(r.stderr.replace("\u2502", " ").split())


def _error_line(r: CliResult) -> str:
    """The one ``error:`` line on stderr (and that there is exactly one, and no traceback)."""
    assert "Traceback" not in r.output, r.output
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.output
    return lines[0]


# --------------------------------------------------------------------------- broker URLs


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"amqp://u:p@{LONG_LABEL}:5672//", f"has an invalid host: the label '{'a' * 40}...' is 64 bytes long, the limit is 63"),
        ("amqp://u:p@" + ".".join(["b" * 60] * 5) + "//", "has an invalid host: the host name is 304 bytes long, the limit is 253"),
        ("amqp://u:p@ho_st!//", "has an invalid host: 'ho_st!' is not a valid host name (letters, digits, '-' and '.' only)"),
        ("amqp://u:p@a..b//", "has an invalid host: 'a..b' has an empty label (two dots in a row, or a leading dot)"),
        ("amqp://u:p@-h//", "has an invalid host: '-h' is not a valid host name (letters, digits, '-' and '.' only)"),
        ("amqp://u:p@999.1.1.1//", "has an invalid host: '999.1.1.1' is not a valid IPv4 address"),
        ("amqp://u:p@[::1//", "is invalid: Invalid IPv6 URL"),
        ("amqp://u:p@:5672//", "has no host"),
        ("amqp://u:p@h:0//", "is invalid: Port 0 is out of range 1-65535"),
        ("amqp://u:p@h:abc//", "is invalid: Port could not be cast to integer value as 'abc'"),
        ("amqp://u:p@h//?heartbeat=abc", "has an invalid option: ?heartbeat=abc is not a number of seconds"),
        ("amqp://u:p@h//?heartbeat=nan", "has an invalid option: ?heartbeat=nan must be a finite number of seconds, 0 or more"),
        ("amqp://u:p@h//?ssl=false", "has an invalid option: ?ssl=false would turn TLS on (kombu reads any value as on): drop ?ssl= for a plain connection"),
        ("amqp://u:p@h//?ssl_cert_reqs=x", "has an invalid option: ?ssl_cert_reqs=x must be one of CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE, required, optional, none"),
        ("amqp://u:p@h//?ssl=1&ssl_ca_certs=ca.pem", "has an invalid option: ?ssl= cannot be combined with ?ssl_ca_certs="),
        ("amqp://u:p@h//?login_method=x", "has an invalid option: ?login_method=x must be one of AMQPLAIN, PLAIN, EXTERNAL, GSSAPI"),
        ("amqp://u:p@h//?foo=1", "has an invalid option: ?foo= is not an option kombu knows (known: heartbeat, ssl, login_method, insist, ssl_*)"),
        ("amqp://u:p@h//;amqp://u:p@" + LONG_LABEL + "//", f"has an invalid host: the label '{'a' * 40}...' is 64 bytes long, the limit is 63"),
    ],
)  # fmt: skip
def test_malformed_broker_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        BrokerUrl.parse(url, "flag --broker")
    assert err.value.message == f"broker URL (from flag --broker) {message}"


@pytest.mark.parametrize(
    "url",
    [
        "amqp://u:p@rabbit_mq:5672/v",  # container names
        "amqp://u:p@b\u00fccher.example//",  # an international name
        "amqp://u:p@[::1]:5673//",
        "amqp://u:p@host.example.//?heartbeat=10&login_method=PLAIN&insist=1",
        "amqps://u:p@h//?ssl_cert_reqs=CERT_NONE&ssl_ca_certs=/ca.pem",
    ],
)
def test_well_formed_broker_urls_still_parse(url: str) -> None:
    BrokerUrl.parse(url)


def test_ssl_in_the_query_means_tls_as_for_kombu() -> None:
    for url in ("amqp://u:p@h//?ssl=1", "amqp://u:p@h//?ssl_cert_reqs=none"):
        target = BrokerUrl.parse(url)
        assert target.tls
        assert target.pika_parameters().ssl_options is not None
    assert BrokerUrl.parse("amqp://u:p@h//?ssl=1").port == 5671  # kombu's TLS port when none is given
    assert not BrokerUrl.parse("amqp://u:p@h//?heartbeat=5").tls


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"amqp://guest:guest@{LONG_LABEL}:5672//", "has an invalid host: the label"),  # exit 70 on main
        (
            "amqp://guest:guest@127.0.0.1:1//?heartbeat=abc",
            "has an invalid option: ?heartbeat=abc",
        ),  # 70: queues, purge
        (
            "amqp://guest:guest@127.0.0.1:1//?connect_timeout=3",
            "has an invalid option: ?connect_timeout=3",
        ),  # 70: submit, status
    ],
    ids=["long-label", "heartbeat", "connect-timeout"],
)
@pytest.mark.parametrize("command", list(BROKER_COMMANDS))
def test_every_command_says_which_part_of_the_url_is_wrong(cli: CliRun, command: str, url: str, message: str) -> None:
    r = cli(*BROKER_COMMANDS[command], "--broker", url)
    assert r.returncode == 3, r.output
    assert _error_line(r).startswith(f"error: broker URL (from flag --broker) {message}")


def test_a_malformed_url_from_the_environment_names_its_source(cli: CliRun) -> None:
    r = cli("status", "--json", env={"CELERYCTL_BROKER_URL": "amqp://u:p@h//?heartbeat=x"})
    assert r.returncode == 3
    assert r.json()["error"]["message"] == (
        "broker URL (from env CELERYCTL_BROKER_URL) has an invalid option: ?heartbeat=x is not a number of seconds"
    )


def test_doctor_reports_a_malformed_url_as_a_failed_settings_check(cli: CliRun) -> None:
    r = cli("doctor", "--json", "--broker", f"amqp://u:p@{LONG_LABEL}//")
    assert r.returncode == 1, r.output  # exit 70 on main
    settings = r.json()["checks"][0]
    assert (settings["name"], settings["status"]) == ("settings", "fail")
    assert settings["detail"].startswith("broker URL (from flag --broker) has an invalid host: the label")


def test_ssl_in_the_query_is_checked_with_tls(cli: CliRun, rabbit: RabbitNode) -> None:
    """kombu connects with TLS for ?ssl=1: the node (plain AMQP) cannot be reached that way, and
    the worker says so instead of retrying for ever after a plain check succeeded."""
    url = f"amqp://guest:guest@127.0.0.1:{rabbit.port}//?ssl=1"
    r = cli("worker", "--broker", url, timeout=60)
    assert r.returncode == 6, r.output
    assert _error_line(r).startswith(
        f"error: cannot reach the broker at amqp://guest:****@127.0.0.1:{rabbit.port}//?ssl=1"
    )


# --------------------------------------------------------------------------- durations, counts, ports


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "--timeout", "nan"], "Invalid value for '--timeout' / '-t': must be a finite number of seconds, got 'nan'"),
        (["status", "--timeout", "0.01"], "Invalid value for '--timeout' / '-t': must be at least 0.1 seconds, got '0.01'"),
        (["top", "--duration", "-1"], "Invalid value for '--duration' / '-d': must be at least 0 seconds, got '-1'"),
        (["top", "--refresh", "inf"], "Invalid value for '--refresh': must be a finite number of seconds, got 'inf'"),
        (["doctor", "--timeout", "nan"], "Invalid value for '--timeout': must be a finite number of seconds, got 'nan'"),
        (["doctor", "--ping-timeout", "0"], "Invalid value for '--ping-timeout': must be at least 0.05 seconds, got '0'"),
        (["submit", "add", "--wait", "--timeout", "nan"], "Invalid value for '--timeout' / '-t': must be a finite number of seconds, got 'nan'"),
        (["submit", "add", "--wait", "--timeout", "0"], "Invalid value for '--timeout' / '-t': must be more than 0 seconds, got '0'"),
        (["submit", "add", "--countdown", "-5"], "Invalid value for '--countdown': must be at least 0 seconds, got '-5'"),
        (["submit", "add", "--count", "0"], "Invalid value for '--count' / '-n': must be at least 1, got 0"),
        (["submit", "add", "--priority", "10"], "Invalid value for '--priority': must be from 0 to 9, got 10"),
        (["worker", "--wait-for-broker", "inf"], "Invalid value for '--wait-for-broker': must be a finite number of seconds, got 'inf'"),
        (["worker", "--concurrency", "0"], "Invalid value for '--concurrency' / '-c': must be at least 1, got 0"),
        (["flower", "--port", "70000"], "Invalid value for '--port' / '-p': 70000 is out of range"),
        (["demo", "--timeout", "nan"], "Invalid value for '--timeout' / '-t': must be a finite number of seconds, got 'nan'"),
        (["demo", "--seconds", "-1"], "Invalid value for '--seconds': must be from 0 to 3600, got -1"),
        (["demo", "--port", "80"], "Invalid value for '--port' / '-p': 80 is out of range"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else "",
)  # fmt: skip
def test_bad_durations_counts_and_ports_are_usage_errors(cli: CliRun, args: list[str], message: str) -> None:
    assert message in _usage_error(cli(*args))


def test_demo_refuses_a_task_longer_than_its_timeout(cli: CliRun) -> None:
    r = cli("demo", "--seconds", "90")
    assert r.returncode == 2, r.output
    assert _error_line(r) == "error: longtime_add would run 90 s, longer than --timeout 60 s allows"


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "soon"])
def test_float_settings_from_the_environment_are_config_errors(cli: CliRun, value: str) -> None:
    r = cli("status", env={"CELERYCTL_PING_TIMEOUT": value})
    assert r.returncode == 3, r.output
    assert _error_line(r).startswith("error: ping_timeout (from env CELERYCTL_PING_TIMEOUT) must be ")


def test_float_settings_from_the_file_are_config_errors(cli: CliRun, tmp_path: Path) -> None:
    config = tmp_path / "celeryctl.toml"
    config.write_text("doctor_timeout = inf\n")
    r = cli("--config", str(config), "queues")
    assert r.returncode == 3, r.output
    assert _error_line(r) == f"error: doctor_timeout (from file {config}) must be a finite number of seconds, got inf"
    assert "hint: for example doctor_timeout = 2.5" in r.stderr


# --------------------------------------------------------------------------- queue names


@pytest.mark.parametrize(
    "args",
    [
        ["worker", "-Q", f"celery,{LONG_QUEUE}"],  # a traceback and exit 0 on main
        ["status", "-Q", LONG_QUEUE],
        ["queues", "-Q", LONG_QUEUE],
        ["top", "-Q", LONG_QUEUE],
        ["submit", "add", "1", "2", "-Q", LONG_QUEUE],
        ["purge", LONG_QUEUE, "--yes"],
        ["queues", "-Q", "\u00e9" * 128],  # 256 bytes of UTF-8
    ],
    ids=["worker", "status", "queues", "top", "submit", "purge", "queues-utf8"],
)
def test_queue_names_over_255_bytes_are_usage_errors(cli: CliRun, args: list[str]) -> None:
    assert "the queue name is 256 bytes long, the limit is 255 (use a shorter queue name)" in _usage_error(cli(*args))


def test_a_usage_error_under_json_is_one_json_document(cli: CliRun) -> None:
    r = cli("status", "--json", "--timeout", "nan")
    assert r.returncode == 2, r.output
    assert r.json()["error"]["message"] == (
        "Invalid value for '--timeout' / '-t': must be a finite number of seconds, got 'nan' (for example 2.5)"
    )


def test_a_worker_accepts_many_short_queues(cli: CliRun) -> None:
    """Each name of a comma-separated -Q is checked, not the whole list (300 bytes here)."""
    names = ",".join(f"queue-{i:03d}" for i in range(30))
    r = cli("worker", "-Q", names, "--broker", "amqp://guest:guest@127.0.0.1:1//")
    assert r.returncode == 6, r.output  # got past the option, to the (closed) broker


# --------------------------------------------------------------------------- the URL's login first


@pytest.fixture(scope="module")
def refused_urls(rabbit: RabbitNode, make_vhost: VhostFactory) -> dict[str, str]:
    vhost = make_vhost("inputs")
    return {
        "password": build_amqp_url("guest", "wrong-password", "127.0.0.1", rabbit.port, vhost.name),
        "vhost": build_amqp_url("guest", "guest", "127.0.0.1", rabbit.port, f"{vhost.name}-missing"),
    }


@pytest.mark.parametrize("why", ["password", "vhost"])
@pytest.mark.parametrize("command", ["queues", "top", "status", "purge"])
def test_commands_check_the_urls_login_first(
    cli: CliRun, rabbit: RabbitNode, refused_urls: dict[str, str], command: str, why: str
) -> None:
    """On celeryctl's own node ``queues`` read through rabbitmqctl and listed nothing, exit 0."""
    env = {"CELERYCTL_DATA_DIR": str(rabbit.data_dir)}  # the node is celeryctl's: rabbitmqctl is used
    r = cli(*BROKER_COMMANDS[command], "--broker", refused_urls[why], env=env, timeout=60)
    assert r.returncode == 7, r.output
    line = _error_line(r)
    assert line.startswith(f"error: the broker at amqp://guest:****@127.0.0.1:{rabbit.port}/")
    expected = "(wrong user name or password)" if why == "password" else "does not exist"
    assert line.endswith(expected), line
    assert "wrong-password" not in r.output


# --------------------------------------------------------------------------- help placeholders


def _command_paths() -> list[list[str]]:
    import typer.main

    paths: list[list[str]] = [[]]

    def walk(cmd: object, prefix: list[str]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


TYPE_PLACEHOLDER = re.compile(r"<[a-z][a-z_\[\]|, .]*>|\{[A-Za-z_]+\}")


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "root")
def test_help_uses_plain_placeholders(cli: CliRun, path: list[str]) -> None:
    r = cli(*path, "--help")
    assert r.returncode == 0, r.output
    found = TYPE_PLACEHOLDER.findall(r.stdout)
    assert not found, f"celeryctl {' '.join(path)} --help shows {found}:\n{r.stdout}"


def test_help_names_arguments_plainly(cli: CliRun) -> None:
    assert "Usage: celeryctl submit [OPTIONS] TASK [ARGS...]" in cli("submit", "--help").stdout
    assert "Usage: celeryctl purge [OPTIONS] QUEUE" in cli("purge", "--help").stdout
    assert "Usage: celeryctl worker [OPTIONS] [CELERY_ARGS...]" in cli("worker", "--help").stdout
