"""The one runner for external programs: a program that hangs is a timeout (exit 8), not a bug (exit 70).

Fake programs in a temporary bin directory stand in for rabbitmq-server, rabbitmqctl and apt-get:
the real ones cannot easily be made to hang, be missing or be unexecutable.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from celeryctl.errors import ExitCode, NotInstalledError, PermissionDeniedError, TimeoutError_
from celeryctl.rabbitmq import install, node
from celeryctl.rabbitmq.ctl import Runner, run_program
from celeryctl.rabbitmq.node import Node, pick_free_port
from tests.conftest import fake_bin

HANGS = "exec sleep 30\n"


def fake(bin_dir: Path, name: str, body: str, mode: int = 0o755) -> Path:
    """One fake program (conftest's ``fake_bin``), with its mode."""
    path = fake_bin(bin_dir, {name: body}) / name
    path.chmod(mode)
    return path


def test_a_program_that_hangs_is_killed_and_reported_as_a_timeout(tmp_path: Path) -> None:
    prog = fake(tmp_path / "bin", "sleepy", HANGS)
    started = time.monotonic()
    with pytest.raises(TimeoutError_) as caught:
        run_program([str(prog), "--forever"], timeout=0.5, timeout_hint="is it stuck?")
    assert time.monotonic() - started < 10
    assert caught.value.exit_code == ExitCode.TIMEOUT == 8
    assert caught.value.message == "sleepy --forever did not answer within 0.5 s"
    assert caught.value.hint == "is it stuck?"


def test_a_program_is_resolved_on_the_path_of_its_environment(tmp_path: Path) -> None:
    fake(tmp_path / "bin", "hello", "echo out; echo err >&2; exit 3\n")
    result = run_program(["hello"], env={"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}, timeout=10)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.argv == [str(tmp_path / "bin" / "hello")]


def test_a_missing_program_is_not_installed_and_an_unexecutable_one_is_not_allowed(tmp_path: Path) -> None:
    with pytest.raises(NotInstalledError) as missing:
        run_program(["celeryctl-no-such-program"], env={"PATH": str(tmp_path)}, timeout=5)
    assert missing.value.exit_code == 4
    assert missing.value.message == "celeryctl-no-such-program not found on PATH"
    with pytest.raises(NotInstalledError):
        run_program([str(tmp_path / "absent")], timeout=5)
    locked = fake(tmp_path / "bin", "locked", "true\n", mode=0o644)
    with pytest.raises(PermissionDeniedError) as denied:
        run_program([str(locked)], timeout=5)
    assert denied.value.exit_code == 5
    assert denied.value.message == f"not allowed to run {locked}"


def test_secrets_go_on_stdin_and_are_redacted_from_both_streams(tmp_path: Path) -> None:
    prog = fake(tmp_path / "bin", "echoer", 'read pw; echo "got $pw"; echo "bad $pw" >&2; exit 1\n')
    result = run_program([str(prog)], stdin="s3cret\n", secrets=["s3cret"], timeout=10)
    assert result.returncode == 1
    assert (result.stdout, result.stderr) == ("got ****\n", "bad ****\n")


def test_output_to_a_file_does_not_wait_for_daemons_holding_the_streams(tmp_path: Path) -> None:
    # rabbitmq-server -detached leaves daemons behind that inherit its stdout and stderr.
    prog = fake(tmp_path / "bin", "launcher", "echo launched\n(exec sleep 5) &\nexit 0\n")
    log = tmp_path / "boot.log"
    started = time.monotonic()
    result = run_program([str(prog)], timeout=30, output=log)
    assert time.monotonic() - started < 4
    assert result.stdout == "launched\n" == log.read_text()


def test_a_rabbitmqctl_that_hangs_is_a_timeout_naming_the_command(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    fake(bin_dir, "rabbitmq-server", "exit 0\n")
    fake(bin_dir, "rabbitmqctl", HANGS)
    runner = Runner(bin_dir=bin_dir, timeout=1)
    with pytest.raises(TimeoutError_) as caught:
        runner.run("version")
    assert caught.value.exit_code == 8
    assert caught.value.message == "rabbitmqctl version did not answer within 1 s"
    assert caught.value.hint == "is the node overloaded or stuck? check its log"


def test_broker_start_with_a_hanging_rabbitmq_server_exits_8_not_70(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from celeryctl.cli import main

    bin_dir = tmp_path / "bin"
    fake(bin_dir, "rabbitmq-server", HANGS)
    fake(bin_dir, "rabbitmqctl", "exit 0\n")
    monkeypatch.setattr(node, "DETACH_TIMEOUT", 1.0)
    for key in [k for k in os.environ if k.startswith("CELERYCTL_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CELERYCTL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CELERYCTL_RABBITMQ_BIN_DIR", str(bin_dir))
    port = pick_free_port([], set())
    with pytest.raises(SystemExit) as exited:
        main(["broker", "start", "--port", str(port)])
    err = capsys.readouterr().err
    assert exited.value.code == 8, err
    assert "rabbitmq-server -detached did not answer within 1 s" in err
    assert "boot.log" in err
    assert "unexpected error" not in err and "Traceback" not in err
    assert Node(tmp_path / "data" / "node").running_info() is None


def test_apt_get_that_hangs_is_a_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake(tmp_path / "bin", "apt-get", HANGS)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    monkeypatch.setattr(install, "detect", lambda: None)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    with pytest.raises(TimeoutError_) as caught:
        install.install(timeout=0.5)
    assert caught.value.exit_code == 8
    assert caught.value.message == "apt-get update did not answer within 0.5 s"
