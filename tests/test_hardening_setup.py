"""setup-broker (and the demo's broker preparation) never half-done: issue 11, against the session's node.

Every check that could fail after the node was changed runs before it is; a save that fails
anyway (or Ctrl-C) says the broker was changed, and the generated password stays reachable.
Fakes stand in only for what the real thing cannot do on demand: a directory that vanishes
between the checks and the save, a rabbitmqctl that is still busy when Ctrl-C comes.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeryctl.broker import build_amqp_url
from celeryctl.probe import check_access
from celeryctl.rabbitmq.ctl import find_bin_dir
from celeryctl.settings import load_settings
from tests.conftest import RABBITMQ_TOOLS, CliResult, CliRun, RabbitNode, TerminalRun, fake_bin, wait_for


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def env(rabbit: RabbitNode) -> dict[str, str]:
    """CLI env aiming at the session node as celeryctl's own node."""
    return {"CELERYCTL_DATA_DIR": str(rabbit.data_dir)}


def snapshot(rabbit: RabbitNode) -> dict[str, Any]:
    """Users (names, tags, password hashes), vhosts and permissions as the node has them."""
    defs = json.loads(rabbit.runner().run("export_definitions", "-", "--format", "json").stdout)
    return {
        "users": sorted(json.dumps(u, sort_keys=True) for u in defs["users"]),
        "vhosts": sorted(v["name"] for v in defs["vhosts"]),
        "permissions": sorted(json.dumps(p, sort_keys=True) for p in defs["permissions"]),
    }


def user_names(rabbit: RabbitNode) -> set[str]:
    return {u["user"] for u in rabbit.runner().json("list_users")}


def one_error(result: CliResult, exit_code: int) -> dict[str, Any]:
    """The one JSON error document of a --json run, with the exit code the user sees."""
    assert "Traceback" not in result.output, result.output
    assert result.returncode == exit_code, result.output
    doc = result.json()
    assert doc["ok"] is False and doc["error"]["exit_code"] == exit_code, doc
    assert doc["error"]["hint"]
    return doc["error"]  # type: ignore[no-any-return]


def one_line_error(result: CliResult, exit_code: int) -> str:
    """The human run: exit code, no traceback, one ``error:`` line (returned)."""
    assert "Traceback" not in result.output, result.output
    assert result.returncode == exit_code, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "hint:" in result.stderr
    return lines[0]


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory in which no new file can be made, root included (immutable; chmod does not stop root)."""
    path = tmp_path / "locked"
    path.mkdir()
    path.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True, capture_output=True)
    try:
        probe = path / "probe"
        with pytest.raises(OSError):
            probe.touch()
        yield path
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)
        path.chmod(0o755)


def ctl_shim(directory: Path, after_import: str) -> Path:
    """A bin dir whose rabbitmqctl runs the real import and then ``after_import`` (shell); all else is real."""
    real = find_bin_dir({k: v for k, v in os.environ.items() if k != "CELERYCTL_RABBITMQ_BIN_DIR"})
    assert real is not None
    ctl = (
        'case " $* " in *" import_definitions "*) '
        f'"{real / "rabbitmqctl"}" "$@"; rc=$?; {after_import}; exit $rc;; esac\n'
        f'exec "{real / "rabbitmqctl"}" "$@"\n'
    )
    bodies = {tool: f'exec "{real / tool}" "$@"\n' for tool in RABBITMQ_TOOLS}
    bodies["rabbitmqctl"] = ctl
    return fake_bin(directory, bodies)


# --------------------------------------------------------------------------- validated before the first change


@pytest.mark.parametrize("port", ["70000", "0", "-1", "5672x"])
def test_bad_port_is_refused_before_anything_changes(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], port: str
) -> None:
    user = unique("u")
    before = snapshot(rabbit)
    args = ("setup-broker", "--user", user, "--vhost", unique("v"), f"--port={port}")
    err = one_error(cli(*args, "--json", env=env), 2)
    assert "--port" in err["message"] and port in err["message"]
    human = cli(*args, env=env)  # a usage error, in click's own format
    assert human.returncode == 2 and "Traceback" not in human.output
    assert "Invalid value for '--port'" in human.stderr
    assert snapshot(rabbit) == before and user not in user_names(rabbit)


@pytest.mark.parametrize(
    ("host", "exit_code", "needle"),
    [
        ("nosuch-host.invalid", 6, "cannot resolve nosuch-host.invalid"),
        ("two words", 2, "is not a valid host name"),
        ("a/b", 2, "is not a valid host name"),
        ("user@host", 2, "is not a valid host name"),
        ("x" * 64 + ".example.com", 2, "is 64 bytes long, the limit is 63"),
        ("h" * 300, 2, "longer than 253 bytes"),
    ],
    ids=["unresolvable", "space", "slash", "at", "long-label", "too-long"],
)
def test_bad_host_is_refused_before_anything_changes(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], host: str, exit_code: int, needle: str
) -> None:
    user = unique("u")
    before = snapshot(rabbit)
    err = one_error(
        cli("setup-broker", "--user", user, "--vhost", unique("v"), "--host", host, "--json", env=env), exit_code
    )
    assert err["message"].startswith("--host: ") and needle in err["message"], err
    assert snapshot(rabbit) == before and user not in user_names(rabbit)


def test_settings_file_that_cannot_be_written_is_refused_before_anything_changes(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], unwritable_dir: Path
) -> None:
    user = unique("u")
    before = snapshot(rabbit)
    args = ("setup-broker", "--user", user, "--vhost", unique("v"))
    err = one_error(cli(*args, "--json", env=env, cwd=unwritable_dir), 5)
    assert err["message"] == f"cannot save the settings in {unwritable_dir}: Operation not permitted"
    assert "--no-save" in err["hint"] and "--config" in err["hint"]
    line = one_line_error(cli(*args, env=env, cwd=unwritable_dir), 5)
    assert str(unwritable_dir) in line
    assert snapshot(rabbit) == before and user not in user_names(rabbit)
    # --no-save needs no settings file: the same run then goes through.
    ok = cli(*args, "--no-save", "--json", env=env, cwd=unwritable_dir)
    assert ok.returncode == 0 and ok.json()["changed"] is True, ok.output


def test_settings_file_that_is_a_link_or_broken_is_refused_before_anything_changes(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], tmp_path: Path
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text("")
    (workdir / "celeryctl.toml").symlink_to(elsewhere)
    user = unique("u")
    before = snapshot(rabbit)
    args = ("setup-broker", "--user", user, "--vhost", unique("v"), "--json")
    err = one_error(cli(*args, env=env), 3)
    assert "is a symbolic link" in err["message"]
    assert elsewhere.read_text() == ""
    # A file that does not parse: named with its line, before anything is asked of the node.
    (workdir / "celeryctl.toml").unlink()
    (workdir / "celeryctl.toml").write_text('broker_url = "amqp://x@h/v"\nbroker_url = "again"\n')
    err = one_error(cli(*args, env=env), 3)
    assert "celeryctl.toml:2" in err["message"]
    assert snapshot(rabbit) == before and user not in user_names(rabbit)


@pytest.mark.parametrize("node", ["bad name@host", "rabbit@", "@host", "r@b@c", "n" * 300])
def test_bad_node_name_is_refused_before_rabbitmqctl_runs(cli: CliRun, tmp_path: Path, node: str) -> None:
    # A rabbitmqctl that records being called: it must not be.
    marker = tmp_path / "called"
    fake = fake_bin(tmp_path / "fake", f'touch "{marker}"\nexit 70\n')
    err = one_error(cli("setup-broker", "--node", node, "--json", env={"CELERYCTL_RABBITMQ_BIN_DIR": str(fake)}), 2)
    assert err["message"].startswith("--node "), err
    assert not marker.exists()
    err = one_error(
        cli("setup-broker", "--json", env={"CELERYCTL_RABBITMQ_BIN_DIR": str(fake), "CELERYCTL_NODE": node}), 3
    )
    assert "CELERYCTL_NODE" in err["message"]
    assert not marker.exists()


def test_demo_with_a_settings_file_it_cannot_write_changes_nothing(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], unwritable_dir: Path
) -> None:
    before = snapshot(rabbit)
    err = one_error(cli("demo", "--seconds", "0", "--json", env=env, cwd=unwritable_dir), 5)
    assert err["message"] == f"cannot save the settings in {unwritable_dir}: Operation not permitted"
    assert "--no-save" in err["hint"]
    assert snapshot(rabbit) == before


# --------------------------------------------------------------------------- failing after the change


@pytest.fixture
def vanishing_config(tmp_path: Path, env: dict[str, str]) -> tuple[Path, dict[str, str]]:
    """A settings file whose directory disappears right after the import: the save then fails."""
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    config = conf_dir / "celeryctl.toml"
    config.write_text("")
    shim = ctl_shim(tmp_path / "shim", f"rm -rf {shlex.quote(str(conf_dir))}")
    return config, {**env, "CELERYCTL_RABBITMQ_BIN_DIR": str(shim), "CELERYCTL_CONFIG": str(config)}


def test_save_failing_after_the_change_says_so_and_keeps_the_password_on_request(
    cli: CliRun, rabbit: RabbitNode, vanishing_config: tuple[Path, dict[str, str]], env: dict[str, str]
) -> None:
    config, bad_env = vanishing_config
    user, vhost = unique("u"), unique("v")
    args = ("setup-broker", "--user", user, "--vhost", vhost)
    err = one_error(cli(*args, "--json", "--show-password", env=bad_env), 3)
    assert err["code"] == "settings_not_saved"
    # The cause's own words follow (the settings writer's message, or the OS error).
    assert err["message"].startswith(
        f"the broker was changed (a new password for '{user}') but the settings were NOT saved: cannot write {config}: "
    )
    assert "--password-stdin" in err["hint"] and "--rotate-password" in err["hint"]
    details = err["details"]
    assert details["broker_changed"] is True and details["saved"] is False
    password = details["password"]
    assert details["url"] == build_amqp_url(user, password, "127.0.0.1", rabbit.port, vhost)
    assert check_access(details["url"]).ok  # the password given back is the user's

    # The way out the hint names: the directory back, the password on stdin; nothing changes, the URL is saved.
    config.parent.mkdir()
    config.write_text("")
    done = cli(*args, "--password-stdin", "--json", env={**env, "CELERYCTL_CONFIG": str(config)}, input=password)
    assert done.returncode == 0, done.output
    assert done.json()["changed"] is False and done.json()["verification"]["ok"] is True
    assert load_settings(env={"CELERYCTL_CONFIG": str(config)}).broker_url == details["url"]


def test_save_failing_without_show_password_never_prints_it(
    cli: CliRun, rabbit: RabbitNode, vanishing_config: tuple[Path, dict[str, str]]
) -> None:
    config, bad_env = vanishing_config
    user, vhost = unique("u"), unique("v")
    result = cli("setup-broker", "--user", user, "--vhost", vhost, "--json", env=bad_env)
    err = one_error(result, 3)
    assert "password" not in err["details"] and "****" in err["details"]["url"]
    assert "--rotate-password" in err["hint"]
    assert user in user_names(rabbit)  # the change stays; the password is nowhere in the output
    assert not re.search(r":(?!\*\*\*\*)[^@/]+@", result.output)

    config.parent.mkdir()  # the shim removed it
    config.write_text("")
    human = cli("setup-broker", "--user", unique("u"), "--vhost", vhost, env=bad_env)
    line = one_line_error(human, 3)
    assert "the broker was changed (a new password for " in line and "but the settings were NOT saved" in line
    assert "shown this once" not in human.stderr  # stderr is a pipe here, not a terminal


def test_save_failing_on_a_terminal_shows_the_password_once(
    rabbit: RabbitNode, vanishing_config: tuple[Path, dict[str, str]], terminal: TerminalRun
) -> None:
    _config, bad_env = vanishing_config
    user, vhost = unique("u"), unique("v")
    term = terminal("setup-broker", "--user", user, "--vhost", vhost, env=bad_env)
    assert term.wait(timeout=120) == 3, term.text
    screen = term.text.replace("\r", "")
    assert "Traceback" not in screen
    assert "the settings were NOT saved" in screen
    match = re.search(r"shown this once; keep it:\n  (\S+)\n", screen)
    assert match, screen
    password = match.group(1)
    assert screen.count(password) == 1
    assert check_access(build_amqp_url(user, password, "127.0.0.1", rabbit.port, vhost)).ok


def busy_import_shim(directory: Path) -> tuple[Path, Path, Path]:
    """A rabbitmqctl whose import is applied, then stays busy until ``release`` exists: (bin dir, busy, release)."""
    busy, release = directory / "busy", directory / "release"
    shim = ctl_shim(directory / "bin", f'touch "{busy}"; while [ ! -e "{release}" ]; do sleep 0.05; done')
    return shim, busy, release


def test_ctrl_c_while_applying_keeps_the_password(
    rabbit: RabbitNode, env: dict[str, str], terminal: TerminalRun, tmp_path: Path
) -> None:
    shim, busy, _release = busy_import_shim(tmp_path / "shim")
    user, vhost = unique("u"), unique("v")
    term = terminal(
        "setup-broker", "--user", user, "--vhost", vhost, env={**env, "CELERYCTL_RABBITMQ_BIN_DIR": str(shim)}
    )
    wait_for(busy.exists, timeout=90, what="the import to be applied")
    term.send("\x03")  # the whole foreground group: the busy rabbitmqctl stops too
    assert term.wait(timeout=60) == 130, term.text
    screen = term.text.replace("\r", "")
    assert "Traceback" not in screen
    assert "interrupted: the broker may have been changed and the settings were not saved" in screen
    match = re.search(r"shown this once; keep it:\n  (\S+)\n", screen)
    assert match, screen
    assert check_access(build_amqp_url(user, match.group(1), "127.0.0.1", rabbit.port, vhost)).ok


def test_ctrl_c_under_json_is_one_document_with_the_password_on_request(
    rabbit: RabbitNode, isolated_env: dict[str, str], env: dict[str, str], tmp_path: Path
) -> None:
    shim, busy, release = busy_import_shim(tmp_path / "shim")
    user, vhost = unique("u"), unique("v")
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "celeryctl", "setup-broker", "--user", user, "--vhost", vhost]
    proc = subprocess.Popen(
        [*argv, "--json", "--show-password"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=workdir,
        env={**isolated_env, **env, "CELERYCTL_RABBITMQ_BIN_DIR": str(shim)},
    )
    try:
        wait_for(busy.exists, timeout=90, what="the import to be applied")
        proc.send_signal(signal.SIGINT)
        release.touch()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        release.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = CliResult(proc.returncode, stdout, stderr, argv)
    err = one_error(result, 130)
    assert err["code"] == "interrupted" and err["details"]["saved"] is False
    assert check_access(err["details"]["url"]).ok
    assert err["details"]["url"] == build_amqp_url(user, err["details"]["password"], "127.0.0.1", rabbit.port, vhost)
    assert not (workdir / "celeryctl.toml").exists()


# --------------------------------------------------------------------------- --delete refused, help


def test_delete_refused_is_not_confirmed_not_a_failure_report(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str]
) -> None:
    user, vhost = unique("u"), unique("v")
    made = cli("setup-broker", "--user", user, "--vhost", vhost, "--no-save", env=env)
    assert made.returncode == 0, made.output
    args = ("setup-broker", "--delete", "--user", user, "--vhost", vhost)
    human = cli(*args, env=env, input="")
    line = one_line_error(human, 11)
    assert line == (
        f"error: not confirmed: deleting user '{user}' and vhost '{vhost}' (with all its queues and messages); "
        "nothing was deleted"
    )
    assert "hint: add --yes to delete them" in human.stderr
    assert "what was applied before the failure" not in human.stderr and "failed" not in human.stderr
    err = one_error(cli(*args, "--json", env=env, input=""), 11)
    assert err["code"] == "not_confirmed" and err["message"].startswith("not confirmed: ")
    assert "--yes" in err["hint"]
    assert user in user_names(rabbit)
    gone = cli(*args, "--yes", "--json", env=env)
    assert gone.returncode == 0, gone.output


def test_help_uses_plain_placeholders(cli: CliRun) -> None:
    result = cli("setup-broker", "--help")
    assert result.returncode == 0, result.output
    assert not re.search(r"<[a-z\[\]| ]+>|\{[^}]*\}", result.stdout), result.stdout
    for option in ("--port PORT", "--host HOST", "--node NODE", "--user NAME", "--config FILE", "--data-dir DIR"):
        assert option in result.stdout, option
