"""``celeryctl deploy systemd``: a worker template unit, a target grouping N of them, an environment file.

* ``celeryctl-worker@.service``: one worker per instance (``celeryctl-worker@w1``); the instance
  names the node (``-n %i@%H``) and its health file (``/run/celeryctl/%i/health.json``, under a
  per-instance ``RuntimeDirectory`` so that stopping one instance does not remove another's).
  ``KillMode=mixed``: systemd sends SIGTERM to the main process only (celeryctl's handler gives the
  running tasks ``--grace`` seconds; pool children that got SIGTERM themselves would exit at once,
  killing their task), and SIGKILL, after ``TimeoutStopSec``, to whatever is left in the cgroup.
  ``ExecStartPre`` runs ``celeryctl probe broker``: a broker that is down fails the start, which
  ``Restart=on-failure`` retries every ``RestartSec`` with no start limit; exit codes that a retry
  cannot fix (usage, config, not installed, app) stop the retries.
* ``celeryctl-workers.target``: ``Wants=`` the N instances, so one ``systemctl enable --now`` starts
  them and ``PartOf=`` stops them together.
* ``celeryctl.env``: ``CELERYCTL_BROKER_URL=...`` (and the other settings the worker uses), mode
  0600; systemd reads it as root before dropping privileges, so it stays root-owned.  No password
  is ever on a command line.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from celeryctl.deploy import (
    PRIVATE_FILE,
    STOP_MARGIN,
    DeployFile,
    DeployPlan,
    masked_value,
    seconds_text,
    stop_timeout,
)
from celeryctl.errors import UsageError
from celeryctl.worker_steps import DEFAULT_GRACE

UNIT_DIR = Path("/etc/systemd/system")
DEFAULT_OUTPUT = Path("deploy/systemd")
DEFAULT_ENV_FILE = Path("/etc/celeryctl/celeryctl.env")
WORKER_UNIT = "celeryctl-worker@.service"
TARGET_UNIT = "celeryctl-workers.target"
ENV_NAME = "celeryctl.env"
DATA_DIR = "/var/lib/celeryctl"  # StateDirectory=celeryctl
RESTART_SEC = 5
PROBE_TIMEOUT = 5
# celeryctl's exit codes that a restart cannot fix: usage, config, not installed, app (see errors.py)
NO_RESTART_CODES = (2, 3, 4, 10)
MAX_WORKERS = 100

_ACCOUNT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$|^[0-9]+$")
_PLAIN_ARG = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")


@dataclass(frozen=True)
class SystemdSpec:
    """What ``celeryctl deploy systemd`` was asked for, settings already resolved."""

    program: Path  # absolute path of celeryctl
    environment: dict[str, str]  # CELERYCTL_* for the env file (the broker URL first)
    output: Path = DEFAULT_OUTPUT
    workers: int = 1
    app: str | None = None
    queues: str | None = None  # comma-separated
    user: str | None = None
    group: str | None = None
    grace: float = DEFAULT_GRACE
    workdir: Path | None = None
    env_file: Path = DEFAULT_ENV_FILE


def exec_arg(value: str) -> str:
    """``value`` as one argument on an ``Exec*=`` line, taken literally: ``%`` and ``$`` doubled
    (systemd expands specifiers and variables even inside quotes), quoted with C escapes when it
    holds anything but plain characters."""
    text = value.replace("%", "%%").replace("$", "$$")
    if _PLAIN_ARG.match(value):
        return text
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def env_value(value: str) -> str:
    """``value`` double-quoted for an ``EnvironmentFile``: backslash before ``\\ " ` $``, nothing expanded."""
    if any(ord(ch) < 0x20 for ch in value):
        raise UsageError(
            f"a setting for the environment file holds a control character: {masked_value(value)!r}",
            "check the broker URL and result backend settings",
        )
    return '"' + re.sub(r'(["\\`$])', r"\\\1", value) + '"'


def _path_value(path: Path, what: str) -> str:
    text = str(path)
    if not path.is_absolute():
        raise UsageError(f"{what} must be an absolute path, got {text!r}", f"for example {DEFAULT_ENV_FILE}")
    if any(ord(ch) < 0x20 for ch in text):
        raise UsageError(f"{what} holds a control character: {text!r}", "choose another path")
    return text.replace("%", "%%")


def check_account(value: str, what: str) -> str:
    """A user or group name systemd accepts in ``User=``/``Group=`` (or a numeric id)."""
    if not _ACCOUNT.match(value):
        raise UsageError(
            f"{what} {value!r} is not a valid user or group name",
            "use letters, digits, '_', '.' and '-', starting with a letter or '_' (at most 32), or a number",
        )
    return value


def check_spec(spec: SystemdSpec) -> None:
    if not 1 <= spec.workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be from 1 to {MAX_WORKERS}, got {spec.workers}")
    if spec.user is not None:
        check_account(spec.user, "--user")
    if spec.group is not None:
        check_account(spec.group, "--group")


def worker_argv(spec: SystemdSpec) -> list[str]:
    """ExecStart's words before quoting (``%i``/``%H`` are systemd's: the instance and the host)."""
    argv = [str(spec.program), "worker"]
    if spec.app:
        argv += ["-A", spec.app]
    if spec.queues:
        argv += ["-Q", spec.queues]
    return argv


def _exec_line(words: list[str], specifiers: list[str]) -> str:
    return " ".join([*(exec_arg(w) for w in words), *specifiers])


def worker_unit(spec: SystemdSpec) -> str:
    program = exec_arg(str(spec.program))
    start = _exec_line(worker_argv(spec), [])
    start += f" -n %i@%H --health-file /run/celeryctl/%i/health.json --grace {seconds_text(spec.grace)}"
    service: list[str] = ["Type=simple"]
    if spec.user:
        service.append(f"User={spec.user}")
    if spec.group:
        service.append(f"Group={spec.group}")
    if spec.workdir is not None:
        service.append("# the directory your app (-A) is imported from")
        service.append(f"WorkingDirectory={_path_value(spec.workdir, '--workdir')}")
    service += [
        "# The settings, the broker password among them: a root-owned file of mode 0600 that systemd",
        "# reads before it drops privileges. Never a password on a command line.",
        f"EnvironmentFile={_path_value(spec.env_file, '--env-file')}",
        f"Environment=CELERYCTL_DATA_DIR={DATA_DIR} PYTHONUNBUFFERED=1",
        "# A broker that is down fails the start here; Restart= retries it every RestartSec.",
        f"ExecStartPre={program} probe broker --timeout {PROBE_TIMEOUT}",
        f"ExecStart={start}",
        "# /run/celeryctl/%i holds the health record (`celeryctl probe worker --file ...`); one per",
        "# instance, so that stopping one worker does not remove the others' records.",
        "RuntimeDirectory=celeryctl/%i",
        "StateDirectory=celeryctl",
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        "# celeryctl's exit codes that a restart cannot fix: usage, config, not installed, app",
        f"RestartPreventExitStatus={' '.join(str(c) for c in NO_RESTART_CODES)}",
        "# SIGTERM to the worker's main process only: it stops taking tasks and gives the running ones",
        f"# --grace ({seconds_text(spec.grace)} s) to finish, then re-queues the rest. Its pool processes must not get",
        "# SIGTERM themselves (they would exit at once, killing their task): KillMode=mixed sends",
        "# the final SIGKILL, after TimeoutStopSec, to the whole cgroup.",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        f"# --grace plus {STOP_MARGIN} s to re-queue what is left and close the connection",
        f"TimeoutStopSec={stop_timeout(spec.grace)}",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
    ]
    lines = [
        f"# {WORKER_UNIT}: one Celery worker run by celeryctl; the instance (w1, w2, ...) names it.",
        f"# Written by `celeryctl deploy systemd`; {TARGET_UNIT} starts and stops them together.",
        "[Unit]",
        "Description=celeryctl worker %i",
        "After=network-online.target",
        "Wants=network-online.target",
        f"PartOf={TARGET_UNIT}",
        "# no start limit: a worker waits for its broker however long it is away",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        *service,
        "",
        "[Install]",
        f"WantedBy={TARGET_UNIT}",
        "",
    ]
    return "\n".join(lines)


def instances(spec: SystemdSpec) -> list[str]:
    return [f"celeryctl-worker@w{n}.service" for n in range(1, spec.workers + 1)]


def target_unit(spec: SystemdSpec) -> str:
    lines = [
        f"# {TARGET_UNIT}: the {spec.workers} celeryctl worker(s) of this machine, started and stopped together.",
        "# Written by `celeryctl deploy systemd --workers N`; run it again to change N.",
        "[Unit]",
        f"Description=celeryctl workers ({spec.workers})",
        f"Wants={' '.join(instances(spec))}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def env_file(spec: SystemdSpec, *, masked: bool = False) -> str:
    lines = [
        f"# Settings of the celeryctl workers ({WORKER_UNIT}), read by systemd as root.",
        "# It holds the broker password: keep it owned by root, mode 0600, and out of version control.",
    ]
    for key, value in spec.environment.items():
        lines.append(f"{key}={env_value(masked_value(value) if masked else value)}")
    return "\n".join(lines) + "\n"


def _sudo() -> str:
    return "" if os.geteuid() == 0 else "sudo "


def next_steps(spec: SystemdSpec, output: Path) -> list[str]:
    sudo = _sudo()
    env_src = env_path(spec, output)
    steps = []
    if env_src != spec.env_file:
        steps.append(
            f"{sudo}install -D -m 0600 -o root -g root {shlex.quote(str(env_src))} {shlex.quote(str(spec.env_file))}"
        )
    if output != UNIT_DIR:
        units = " ".join(shlex.quote(str(output / name)) for name in (WORKER_UNIT, TARGET_UNIT))
        steps.append(f"{sudo}install -m 0644 {units} {UNIT_DIR}/")
    steps += [
        f"{sudo}systemctl daemon-reload",
        f"{sudo}systemctl enable --now {TARGET_UNIT}",
        "systemctl status 'celeryctl-worker@*'",
    ]
    return steps


def env_path(spec: SystemdSpec, output: Path) -> Path:
    """Where the environment file is written: beside the units, or (--output /etc/systemd/system,
    installing directly) where the units read it."""
    return spec.env_file if output == UNIT_DIR else output / ENV_NAME


def plan(spec: SystemdSpec) -> DeployPlan:
    """The three files for ``spec``, the commands that install them, and what to know."""
    check_spec(spec)
    output = spec.output.absolute()
    env_at = env_path(spec, output)
    files = [
        DeployFile(output / WORKER_UNIT, worker_unit(spec)),
        DeployFile(output / TARGET_UNIT, target_unit(spec)),
        DeployFile(env_at, env_file(spec), PRIVATE_FILE, masked=env_file(spec, masked=True)),
    ]
    keep = "" if env_at == spec.env_file else f": install it as {spec.env_file}, then delete this copy or keep it"
    notes = [
        f"{env_at} holds the broker password (mode 0600){keep or ': keep it'} out of version control",
        f"check a worker: {shlex.quote(str(spec.program))} probe worker --file /run/celeryctl/w1/health.json --ready",
    ]
    return DeployPlan("systemd", output, files, next_steps(spec, output), notes, _warnings(spec))


def _warnings(spec: SystemdSpec) -> list[str]:
    import pwd

    if spec.user is None:
        return ["the workers will run as root: pass --user to run them as a service account"]
    if not spec.user.isdigit():
        try:
            pwd.getpwnam(spec.user)
        except KeyError:
            return [f"there is no user {spec.user!r} on this machine: create it before starting the workers"]
    return []
