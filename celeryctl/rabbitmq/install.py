"""Installing RabbitMQ from the distribution's packages (apt-get)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celeryctl.errors import CommandError, NotInstalledError, PermissionDeniedError
from celeryctl.rabbitmq.ctl import find_bin_dir, installed_version, run_program

APT_COMMAND = "apt-get update && apt-get install -y rabbitmq-server"
INSTALL_HINT = "install it as https://www.rabbitmq.com/download.html describes for your system"


@dataclass
class Installation:
    bin_dir: Path
    version: str | None
    installed_now: bool

    def to_dict(self) -> dict[str, object]:
        return {"bin_dir": str(self.bin_dir), "version": self.version, "installed_now": self.installed_now}


def detect() -> Installation | None:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        return None
    return Installation(bin_dir, installed_version(bin_dir), False)


def install(on_progress: Callable[[str], None] | None = None, timeout: float = 900) -> Installation:
    """Install rabbitmq-server with apt-get when it is missing (root only)."""
    say = on_progress or (lambda _msg: None)
    found = detect()
    if found is not None:
        return found
    if shutil.which("apt-get") is None:
        raise NotInstalledError("RabbitMQ is not installed and this system has no apt-get", INSTALL_HINT)
    if os.geteuid() != 0:
        raise PermissionDeniedError(
            "installing RabbitMQ needs root",
            f"run: sudo sh -c '{APT_COMMAND}'",
            details={"command": f"sudo sh -c '{APT_COMMAND}'"},
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
