"""Service files for running workers in production: the parts ``systemd`` and ``kubernetes`` share.

A generator (:mod:`celeryctl.deploy.systemd`, :mod:`celeryctl.deploy.kubernetes`) turns settings
and flags into a :class:`DeployPlan`: files as text (no PyYAML, no templates), each with its mode
and, for a file holding a password, the same text with the password masked for ``--dry-run``.
:func:`apply` writes them through :mod:`celeryctl.files` (atomic, never through a link) after
checking that none exists, unless ``force``: nothing is written when one would be overwritten.
This package never imports typer, rich, celery, kombu or pika.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from celeryctl.broker import mask_url
from celeryctl.errors import NotConfirmedError, NotInstalledError
from celeryctl.files import PRIVATE_FILE, make_dir, write_file

if TYPE_CHECKING:
    from celeryctl.settings import Settings

PUBLIC_FILE = 0o644
# After --grace the worker still re-queues the tasks left, closes its pool and its connection: the
# service manager's kill deadline (TimeoutStopSec, terminationGracePeriodSeconds) leaves it this
# long beyond the grace, so the SIGKILL never lands in the middle of handing work back.
STOP_MARGIN = 15


@dataclass(frozen=True)
class DeployFile:
    """One file to write: its text, its mode, and its text with passwords masked when it holds one."""

    path: Path
    text: str
    mode: int = PUBLIC_FILE
    masked: str | None = None  # set for a file holding a secret: what --dry-run shows

    @property
    def secret(self) -> bool:
        return self.masked is not None

    @property
    def shown(self) -> str:
        """The text as it may be printed: masked when the file holds a secret."""
        return self.masked if self.masked is not None else self.text


@dataclass
class DeployPlan:
    kind: str  # systemd | kubernetes
    output: Path
    files: list[DeployFile]
    next_steps: list[str] = field(default_factory=list)  # the exact commands to run next
    notes: list[str] = field(default_factory=list)  # for people: why, where the secret is
    warnings: list[str] = field(default_factory=list)


@dataclass
class DeployResult:
    plan: DeployPlan
    written: bool  # False for --dry-run
    existing: list[Path] = field(default_factory=list)  # files that were there already (overwritten with force)

    def to_dict(self) -> dict[str, object]:
        """The files (paths and modes, never their contents) and the next commands."""
        return {
            "kind": self.plan.kind,
            "output": str(self.plan.output),
            "dry_run": not self.written,
            "files": [
                {
                    "path": str(f.path),
                    "mode": f"{f.mode:04o}",
                    "secret": f.secret,
                    "written": self.written,
                    "replaced": f.path in self.existing,
                }
                for f in self.plan.files
            ],
            "next": list(self.plan.next_steps),
            "warnings": list(self.plan.warnings),
        }


def stop_timeout(grace: float) -> int:
    """Whole seconds the service manager waits after SIGTERM before SIGKILL: the grace plus the margin."""
    return math.ceil(grace) + STOP_MARGIN


def seconds_text(value: float) -> str:
    """A duration as a flag value: ``25`` for 25.0, ``2.5`` for 2.5."""
    return f"{value:g}"


def masked_value(value: str) -> str:
    """A settings value as --dry-run shows it: URLs with their passwords hidden."""
    return mask_url(value)


def worker_environment(settings: Settings) -> dict[str, str]:
    """The ``CELERYCTL_*`` variables a deployed worker needs: the broker URL, and the settings the
    worker reads that were set here (from a flag, the environment or the settings file)."""
    from celeryctl.settings import KEYS

    env = {KEYS["broker_url"].env: settings.broker}
    for name in ("result_backend", "queue_type", "max_deliveries"):
        if settings.sources.get(name, "default") != "default":
            env[KEYS[name].env] = str(getattr(settings, name))
    return env


def broker_warnings(settings: Settings, *, remote: bool) -> list[str]:
    """What to know about the broker URL the files will hold (``remote``: read from other machines)."""
    url = settings.broker_target
    source = settings.sources.get("broker_url", "default")
    warnings = []
    if source in ("default", "celeryctl node"):
        where = "the default" if source == "default" else "celeryctl's own node"
        warnings.append(
            f"the broker URL is {url.masked} ({where}): "
            "set the one the service should use with --broker or CELERYCTL_BROKER_URL"
        )
    if remote and url.on_this_machine:
        warnings.append(f"the broker URL {url.masked} names this machine: pods cannot reach it there")
    return warnings


def celeryctl_program() -> Path:
    """The absolute path of the installed ``celeryctl`` program (systemd needs an absolute path).

    The one that runs now when it was started by name, else the script installed beside this
    Python (the same environment), else the first on PATH.
    """
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    candidates: list[Path] = []
    if argv0 is not None and argv0.name == "celeryctl":
        candidates.append(argv0.absolute())
    candidates.append(Path(sys.executable).absolute().parent / "celeryctl")
    found = shutil.which("celeryctl")
    if found:
        candidates.append(Path(found).absolute())
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise NotInstalledError(
        "cannot find the celeryctl program to name in the service files",
        "install celeryctl so that the `celeryctl` command exists (pip install celeryctl), then run this again",
    )


def apply(plan: DeployPlan, *, force: bool = False, dry_run: bool = False) -> DeployResult:
    """Write the plan's files (or, with ``dry_run``, nothing); refuse to replace any without ``force``."""
    existing = [f.path for f in plan.files if f.path.exists() or f.path.is_symlink()]
    if dry_run:
        return DeployResult(plan, written=False, existing=existing)
    if existing and not force:
        first = existing[0]
        others = f" (and {len(existing) - 1} more of the files)" if len(existing) > 1 else ""
        raise NotConfirmedError(
            f"{first} already exists{others}; nothing was written",
            f"pass --force to overwrite {first.name}{' and the others' if others else ''}, "
            "or choose another directory with --output",
            details={"existing": [str(p) for p in existing]},
        )
    for f in plan.files:
        make_dir(f.path.parent)
        write_file(f.path, f.text, mode=f.mode)
    return DeployResult(plan, written=True, existing=existing)


__all__ = [
    "PRIVATE_FILE",
    "PUBLIC_FILE",
    "STOP_MARGIN",
    "DeployFile",
    "DeployPlan",
    "DeployResult",
    "apply",
    "broker_warnings",
    "celeryctl_program",
    "masked_value",
    "seconds_text",
    "stop_timeout",
    "worker_environment",
]
