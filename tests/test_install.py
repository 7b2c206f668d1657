"""``celeryctl broker install`` on systems without apt-get, Homebrew's layout, and shell completion.

This machine has apt-get, so dnf, apk and brew are fakes on a PATH that holds nothing else
(celeryctl only looks for them: it prints their command and never runs them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from celeryctl.rabbitmq.ctl import find_bin_dir, installed_version
from celeryctl.rabbitmq.install import advice
from tests.conftest import CliRun, fake_bin

SUDO = "" if os.geteuid() == 0 else "sudo "
NO_RABBITMQ = "no-rabbitmq"  # an empty CELERYCTL_RABBITMQ_BIN_DIR: this machine's RabbitMQ is not seen


@pytest.mark.parametrize(
    ("manager", "command", "line"),
    [
        (
            "dnf",
            f"{SUDO}dnf install -y erlang rabbitmq-server",
            "first add Team RabbitMQ's Erlang and RabbitMQ repositories (https://www.rabbitmq.com/docs/install-rpm)",
        ),
        ("apk", f"{SUDO}apk add rabbitmq-server", "Alpine packages it in the community repository"),
        (
            "brew",
            "brew install rabbitmq",
            "Homebrew puts its scripts in {prefix}/sbin (the keg: {prefix}/opt/rabbitmq/sbin)",
        ),
        (None, None, "this system has none of apt-get, dnf, apk or brew"),
    ],
)
def test_install_without_apt_prints_the_exact_command(
    cli: CliRun, tmp_path: Path, manager: str | None, command: str | None, line: str
) -> None:
    tools = fake_bin(tmp_path / "prefix" / "bin", "exit 0\n", ["sudo", *([manager] if manager else [])])
    (tmp_path / NO_RABBITMQ).mkdir()
    env = {"PATH": str(tools), "CELERYCTL_RABBITMQ_BIN_DIR": str(tmp_path / NO_RABBITMQ), "HOMEBREW_PREFIX": ""}
    line = line.format(prefix=tmp_path / "prefix")

    r = cli("broker", "install", env=env)
    assert r.returncode == 4, r.output
    assert line in r.stderr
    if command:
        assert f"hint: run: {command}\n" in r.stderr or f"hint: then run: {command}\n" in r.stderr
    else:
        assert "https://www.rabbitmq.com/docs/download" in r.stderr and "Erlang/OTP" in r.stderr
    assert "Traceback" not in r.output

    doc = cli("broker", "install", "--json", env=env).json()
    assert doc["ok"] is False and doc["error"]["exit_code"] == 4
    assert doc["error"]["details"]["command"] == command
    assert doc["error"]["details"]["package_manager"] == manager


def test_fedora_has_it_in_its_own_repositories_and_a_user_gets_sudo(tmp_path: Path) -> None:
    tools = fake_bin(tmp_path, "exit 0\n", ["dnf", "sudo"])
    fedora = {"ID": "fedora", "NAME": "Fedora Linux"}
    a = advice("dnf", root=False, env={"PATH": str(tools)}, release=fedora)
    assert a.command == "sudo dnf install -y rabbitmq-server"
    assert a.message == "RabbitMQ is not installed; Fedora Linux packages it: install it with dnf"
    assert (
        advice("dnf", root=True, env={"PATH": str(tools)}, release=fedora).command == "dnf install -y rabbitmq-server"
    )
    # Alpine without sudo: doas; with neither: su
    assert advice("apk", root=False, env={"PATH": str(fake_bin(tmp_path / "a", "", ["doas"]))}).command == (
        "doas apk add rabbitmq-server"
    )
    assert advice("apk", root=False, env={"PATH": str(tmp_path / "none")}).command == "su -c 'apk add rabbitmq-server'"


def _homebrew(prefix: Path, version: str = "3.13.7", linked: bool = True) -> Path:
    """Homebrew's layout: the keg Cellar/rabbitmq/VERSION (as `brew install rabbitmq` leaves it), opt/ and sbin/ links."""
    keg = prefix / "Cellar" / "rabbitmq" / version
    fake_bin(keg / "sbin", "exit 0\n", ["rabbitmq-server", "rabbitmqctl", "rabbitmq-env"])
    (keg / "plugins" / f"rabbit-{version}" / "ebin").mkdir(parents=True)
    (keg / "plugins" / f"rabbit_common-{version}").mkdir()
    (prefix / "opt").mkdir(parents=True)
    (prefix / "opt" / "rabbitmq").symlink_to(Path("..") / "Cellar" / "rabbitmq" / version)
    fake_bin(prefix / "bin", "exit 0\n", ["brew"])
    if linked:
        (prefix / "sbin").mkdir()
        for tool in ("rabbitmq-server", "rabbitmqctl", "rabbitmq-env"):
            (prefix / "sbin" / tool).symlink_to(Path("..") / "Cellar" / "rabbitmq" / version / "sbin" / tool)
    return prefix


def test_homebrew_layout_is_found_without_the_pin_and_its_version_read(cli: CliRun, tmp_path: Path) -> None:
    prefix = _homebrew(tmp_path / "homebrew")
    empty = tmp_path / "empty"
    empty.mkdir()
    # `brew shellenv` sets HOMEBREW_PREFIX; PATH need not hold sbin
    assert find_bin_dir({"PATH": str(empty), "HOMEBREW_PREFIX": str(prefix)}) == prefix / "sbin"
    # or the brew on PATH names the prefix
    assert find_bin_dir({"PATH": str(prefix / "bin")}) == prefix / "sbin"
    assert installed_version(prefix / "sbin") == "3.13.7"
    assert installed_version(prefix / "opt" / "rabbitmq" / "sbin") == "3.13.7"
    # keg-only (not linked into PREFIX/sbin): $(brew --prefix rabbitmq)/sbin
    keg_only = _homebrew(tmp_path / "keg-only", "4.0.5", linked=False)
    assert find_bin_dir({"PATH": str(keg_only / "bin")}) == keg_only / "opt" / "rabbitmq" / "sbin"
    assert installed_version(keg_only / "opt" / "rabbitmq" / "sbin") == "4.0.5"

    r = cli("broker", "install", "--json", env={"PATH": str(empty), "HOMEBREW_PREFIX": str(prefix)})
    assert r.returncode == 0, r.output
    assert r.json() == {"ok": True, "bin_dir": str(prefix / "sbin"), "version": "3.13.7", "installed_now": False}


def test_bash_completion_protocol_lists_subcommands(cli: CliRun) -> None:
    # what the script from `celeryctl --show-completion` (bash) runs on TAB
    r = cli(env={"_CELERYCTL_COMPLETE": "complete_bash", "COMP_WORDS": "celeryctl broker st", "COMP_CWORD": "2"})
    assert r.returncode == 0, r.output
    assert r.stdout.split() == ["start", "stop", "status"]
    top = cli(env={"_CELERYCTL_COMPLETE": "complete_bash", "COMP_WORDS": "celeryctl ", "COMP_CWORD": "1"})
    assert {"broker", "worker", "doctor", "setup-broker"} <= set(top.stdout.split())
