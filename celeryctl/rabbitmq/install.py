"""Installing RabbitMQ: apt-get runs here (as root); dnf, apk and Homebrew get the exact command.

celeryctl runs only apt-get itself, the one manager it is tested against for real.  For the
others it prints the command for this system and exits 4: RHEL-family systems need RabbitMQ's
own repositories first, Alpine's package lives in the community repository, and Homebrew must
not run as root and takes minutes; a person should see those steps happen.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from celeryctl.errors import CommandError, NotInstalledError, PermissionDeniedError
from celeryctl.rabbitmq.ctl import find_bin_dir, homebrew_bin_dirs, installed_version, run_program

APT_COMMAND = "apt-get update && apt-get install -y rabbitmq-server"
DOWNLOAD_URL = "https://www.rabbitmq.com/docs/download"
RPM_GUIDE_URL = "https://www.rabbitmq.com/docs/install-rpm"
ERLANG_URL = "https://www.rabbitmq.com/docs/which-erlang"
INSTALL_HINT = f"install it as {DOWNLOAD_URL} describes for your system"
# The order in which a system's package managers are tried; apt-get first, as before.
PACKAGE_MANAGERS = ("apt-get", "dnf", "apk", "brew")


@dataclass
class Installation:
    bin_dir: Path
    version: str | None
    installed_now: bool

    def to_dict(self) -> dict[str, object]:
        return {"bin_dir": str(self.bin_dir), "version": self.version, "installed_now": self.installed_now}


@dataclass(frozen=True)
class Advice:
    """How to install RabbitMQ on a system whose package manager celeryctl does not run."""

    message: str
    hint: str
    command: str | None  # the exact command for this user, or None (no package manager known)
    details: Mapping[str, object]

    def error(self) -> NotInstalledError:
        details = {"command": self.command, **self.details}
        return NotInstalledError(self.message, self.hint, details=details)


def detect() -> Installation | None:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return None
    return Installation(bin_dir, installed_version(bin_dir), False)


def package_manager(env: Mapping[str, str] | None = None) -> str | None:
    """The first of :data:`PACKAGE_MANAGERS` on PATH, or None."""
    path = (os.environ if env is None else env).get("PATH", os.defpath)
    return next((name for name in PACKAGE_MANAGERS if shutil.which(name, path=path)), None)


def os_release() -> dict[str, str]:
    """/etc/os-release as a dict (empty where there is none, as on macOS)."""
    import platform

    try:
        return platform.freedesktop_os_release()
    except OSError:
        return {}


def _as_root(command: str, root: bool, path: str) -> str:
    if root:
        return command
    for tool in ("sudo", "doas"):  # Alpine often has doas and no sudo
        if shutil.which(tool, path=path):
            return f"{tool} {command}"
    return f"su -c '{command}'"


def advice(
    manager: str | None,
    *,
    root: bool,
    env: Mapping[str, str] | None = None,
    release: Mapping[str, str] | None = None,
) -> Advice:
    """The exact command for ``dnf``, ``apk``, ``brew``, or what to install when there is none."""
    env = os.environ if env is None else env
    path = env.get("PATH", os.defpath)
    release = os_release() if release is None else release
    if manager == "dnf":
        system = release.get("NAME") or "this system"
        if release.get("ID") == "fedora":
            command = _as_root("dnf install -y rabbitmq-server", root, path)
            return Advice(
                f"RabbitMQ is not installed; {system} packages it: install it with dnf",
                f"run: {command}",
                command,
                {"package_manager": "dnf"},
            )
        # RHEL, Rocky, Alma, CentOS Stream, Amazon Linux: neither the base repositories nor EPEL
        # carry a current RabbitMQ; Team RabbitMQ's repositories carry both it and Erlang.
        command = _as_root("dnf install -y erlang rabbitmq-server", root, path)
        return Advice(
            f"RabbitMQ is not installed; on {system} first add Team RabbitMQ's Erlang and RabbitMQ "
            f"repositories ({RPM_GUIDE_URL})",
            f"then run: {command}",
            command,
            {"package_manager": "dnf", "repository": RPM_GUIDE_URL},
        )
    if manager == "apk":
        command = _as_root("apk add rabbitmq-server", root, path)
        return Advice(
            "RabbitMQ is not installed; Alpine packages it in the community repository "
            "(enable it in /etc/apk/repositories if apk does not find the package)",
            f"run: {command}",
            command,
            {"package_manager": "apk", "repository": "community"},
        )
    if manager == "brew":
        sbin, keg = homebrew_bin_dirs(env)[:2]
        as_user = "; run brew as yourself, Homebrew refuses root" if root else ""
        return Advice(
            f"RabbitMQ is not installed; Homebrew puts its scripts in {sbin} (the keg: {keg}), "
            f"where celeryctl finds them{as_user}",
            "run: brew install rabbitmq",
            "brew install rabbitmq",
            {"package_manager": "brew", "bin_dirs": [str(sbin), str(keg)]},
        )
    return Advice(
        f"RabbitMQ is not installed and this system has none of {', '.join(PACKAGE_MANAGERS[:-1])} or brew",
        f"install Erlang/OTP ({ERLANG_URL}) and RabbitMQ ({DOWNLOAD_URL}; the generic binary build "
        "runs from any directory), then set CELERYCTL_RABBITMQ_BIN_DIR to its sbin directory",
        None,
        {"package_manager": None, "download": DOWNLOAD_URL, "erlang": ERLANG_URL},
    )


def install(on_progress: Callable[[str], None] | None = None, timeout: float = 900) -> Installation:
    """Install rabbitmq-server with apt-get when it is missing (root only); elsewhere raise the exact command."""
    say = on_progress or (lambda _msg: None)
    found = detect()
    if found is not None:
        return found
    manager = package_manager()
    if manager != "apt-get":
        raise advice(manager, root=os.geteuid() == 0).error()
    if os.geteuid() != 0:
        raise PermissionDeniedError(
            "installing RabbitMQ needs root",
            f"run: sudo sh -c '{APT_COMMAND}'",
            details={"command": f"sudo sh -c '{APT_COMMAND}'", "package_manager": "apt-get"},
        )
    for step, argv in (
        ("updating the package lists (apt-get update)", ["apt-get", "update", "-q"]),
        ("installing rabbitmq-server (apt-get install)", ["apt-get", "install", "-y", "-q", "rabbitmq-server"]),
    ):
        say(step)
        proc = run_program(
            argv,
            env={"DEBIAN_FRONTEND": "noninteractive"},
            timeout=timeout,
            timeout_hint="check the network and the package sources, then run: celeryctl broker install",
            install_hint=INSTALL_HINT,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [f"status {proc.returncode}"]
            raise CommandError(
                f"{' '.join(argv)} failed: {last[0]}",
                "check the network and the package sources, then run: celeryctl broker install",
                argv=argv,
                returncode=proc.returncode,
                stderr=proc.stderr,
            )
    found = detect()
    if found is None:
        raise NotInstalledError(
            "apt-get finished but rabbitmq-server is still not found", "check: dpkg -L rabbitmq-server"
        )
    found.installed_now = True
    return found
