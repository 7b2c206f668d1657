"""The CLI skeleton: version, help of every command, the error boundary, start-up imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from celeryctl import __version__
from celeryctl.cli import app
from tests.conftest import CliRun


def _command_paths() -> list[list[str]]:
    import typer.main

    root = typer.main.get_command(app)
    paths: list[list[str]] = [[]]

    def walk(cmd: object, prefix: list[str]) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(root, [])
    return paths


def test_version(cli: CliRun) -> None:
    r = cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"celeryctl {__version__}"


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "root")
def test_help_of_every_command(cli: CliRun, path: list[str]) -> None:
    r = cli(*path, "--help")
    assert r.returncode == 0, r.output
    assert "Usage:" in r.stdout
    assert "Traceback" not in r.output


def test_every_command_has_a_docstring() -> None:
    import typer.main

    root = typer.main.get_command(app)

    def walk(cmd: object, name: str) -> None:
        assert (getattr(cmd, "help", None) or "").strip(), f"{name} has no help text"
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{name} {sub_name}")

    walk(root, "celeryctl")


def test_unknown_option_is_a_usage_error(cli: CliRun) -> None:
    r = cli("broker", "status", "--bogus")
    assert r.returncode == 2
    assert "No such option" in r.stderr and "--bogus" in r.stderr
    assert "Traceback" not in r.output


def test_usage_error_with_json_prints_one_json_document(cli: CliRun) -> None:
    r = cli("broker", "status", "--json", "--bogus")
    assert r.returncode == 2
    doc = r.json()
    assert doc["ok"] is False and doc["error"]["code"] == "usage" and doc["error"]["exit_code"] == 2


def test_broken_settings_file_is_exit_3_with_file_and_line(cli: CliRun, tmp_path: Path) -> None:
    (tmp_path / "work").mkdir(exist_ok=True)
    (tmp_path / "work" / "celeryctl.toml").write_text('app = "x"\ncolour = "blue"\n')
    r = cli("broker", "status")
    assert r.returncode == 3
    assert "celeryctl.toml:2: unknown key 'colour'" in r.stderr
    assert "hint:" in r.stderr
    assert "Traceback" not in r.output
    r = cli("broker", "status", "--json")
    assert r.returncode == 3
    assert r.json()["error"]["code"] == "config"


def test_help_does_not_import_celery_kombu_or_pika() -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "celeryctl", "--help"], capture_output=True, text=True, check=True
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert not imported & {"celery", "kombu", "pika", "requests"}, sorted(
        imported & {"celery", "kombu", "pika", "requests"}
    )
    assert "typer" in imported  # the check itself sees imports


def test_unusable_data_dir_is_a_clear_error(cli: CliRun, tmp_path: Path) -> None:
    bad = tmp_path / "not-a-dir"
    bad.write_text("x")
    r = cli("broker", "start", "--port", "5999", env={"CELERYCTL_DATA_DIR": str(bad)})
    assert r.returncode == 9
    assert "cannot use" in r.stderr and "--data-dir" in r.stderr
    assert "Traceback" not in r.output


def test_unexpected_error_points_to_debug_and_hides_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from celeryctl.cli import main
    from celeryctl.rabbitmq.node import Node

    def boom(self: Node) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Node, "status", boom)
    monkeypatch.setenv("CELERYCTL_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("CELERYCTL_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["broker", "status"])
    assert exit_info.value.code == 70
    err = capsys.readouterr().err
    assert "unexpected error: RuntimeError: boom" in err and "CELERYCTL_DEBUG=1" in err
    assert "Traceback" not in err

    with pytest.raises(SystemExit):
        main(["broker", "status", "--json"])
    out = capsys.readouterr().out
    assert '"code": "internal"' in out

    monkeypatch.setenv("CELERYCTL_DEBUG", "1")
    with pytest.raises(SystemExit):
        main(["broker", "status"])
    assert "Traceback" in capsys.readouterr().err
