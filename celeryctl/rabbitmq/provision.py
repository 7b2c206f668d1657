"""setup-broker's core: desired state -> plan (against the node's current state) -> apply the difference -> verify.

``setup-broker`` provisions one user, one vhost, the user's tags and its permissions on that
vhost.  The steps live in their own modules: :mod:`~celeryctl.rabbitmq.definitions` reads the
node, :mod:`~celeryctl.rabbitmq.plan` compares (pure), :mod:`~celeryctl.rabbitmq.apply` writes
the difference and verifies it by logging in over AMQP; :mod:`~celeryctl.rabbitmq.target` picks
the node or the management API.  This module knows
which password the settings hold, saves the URL, and ties the steps together.  Running again
converges because every step is planned from the state found.
"""

from __future__ import annotations

import errno
import os
import shlex
import stat
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celeryctl.broker import (
    BrokerUrl,
    build_amqp_url,
    mask_url,
    url_password,
    url_user,
)
from celeryctl.broker.url import parse
from celeryctl.errors import (
    AccessRefusedError,
    CeleryctlError,
    ConfigError,
    ExitCode,
    NotConfirmedError,
    PermissionDeniedError,
    UnreachableError,
    UsageError,
)
from celeryctl.rabbitmq.apply import NodeCheck, Progress, Verification, apply_plan, combined, verify_nodes
from celeryctl.rabbitmq.definitions import read_state
from celeryctl.rabbitmq.plan import Plan, Request, plan_delete, plan_setup, validate_name, validate_password
from celeryctl.rabbitmq.target import Target, check_url, resolve_target

if TYPE_CHECKING:
    from celeryctl.rabbitmq.definitions import Backend

__all__ = ["SetupResult", "Target", "delete", "read_password", "resolve_target", "setup"]
from celeryctl.settings import CONFIG_FILENAME, Settings, read_config_file, save_settings


def read_password(
    *,
    stdin_text: str | None = None,
    env_var: str | None = None,
    text: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The explicit password, from at most one source: stdin text, an environment variable, a flag."""
    given = [
        name
        for name, v in (("--password-stdin", stdin_text), ("--password-env", env_var), ("--password", text))
        if v is not None
    ]
    if len(given) > 1:
        raise UsageError(f"give the password one way only, not {' and '.join(given)}", "use --password-stdin")
    if stdin_text is not None:
        line = stdin_text.splitlines()[0] if stdin_text.splitlines() else ""
        if len([x for x in stdin_text.splitlines() if x]) > 1:
            raise UsageError("--password-stdin: stdin holds more than one line", "pipe exactly one line")
        return validate_password(line, "stdin")
    if env_var is not None:
        environ = os.environ if environ is None else environ
        if env_var not in environ:
            raise UsageError(f"--password-env: the variable {env_var} is not set", f"export {env_var}=... first")
        return validate_password(environ[env_var], f"${env_var}")
    if text is not None:
        return validate_password(text, "--password")
    return None


# --------------------------------------------------------------------------- checks before the first change
# Everything that could fail after the node was changed is checked before it is: a run that
# fails midway would leave a user whose generated password nobody has.


def check_settings_file(path: Path) -> None:
    """The settings file can be written: its directory exists and takes a new file, it is no link,
    and what it holds now parses (it is rewritten, not replaced)."""
    hint = "use --config FILE in a directory you can write, or --no-save"
    if path.is_symlink():
        raise ConfigError(
            f"settings file {path} is a symbolic link; celeryctl does not write a password through a link",
            f"replace the link by the file itself, or {hint}",
        )
    if path.exists():
        if not path.is_file():
            raise ConfigError(f"settings file {path} is not a regular file", hint)
        read_config_file(path)  # ConfigError naming the line when it does not parse
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"cannot save the settings: the directory {parent} does not exist", f"create it, or {hint}")
    try:  # a real file in that directory: os.access() says yes to root on read-only or immutable ones
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        cls = PermissionDeniedError if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else ConfigError
        raise cls(f"cannot save the settings in {parent}: {exc.strerror}", hint) from None


# --------------------------------------------------------------------------- the whole command


def settings_password(settings: Settings, user: str) -> tuple[str | None, str | None]:
    """The password the settings hold for ``user`` (and where from), if their broker URL is that user's."""
    url = settings.broker_url
    if not url or url_user(url) != user:
        return None, None
    return url_password(url), settings.sources.get("broker_url")


@dataclass
class SetupResult:
    plan: Plan
    target: str
    url: str | None = None  # with the password; never printed unless asked
    verification: Verification | None = None
    saved_to: Path | None = None
    settings_changed: bool = False
    warnings: list[str] = field(default_factory=list)
    delete: bool = False
    via: str = "rabbitmqctl"  # or "api": the management API
    nodes: list[NodeCheck] = field(default_factory=list)  # the verification on each node of the URL
    # Set up and saved, yet a node of the list could not be reached: the CLI shows the result, then raises it.
    error: CeleryctlError | None = None

    @property
    def changed(self) -> bool:
        return self.plan.changed

    def to_dict(self, *, show_password: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "changed": self.changed,
            "dry_run": self.plan.dry_run,
            "delete": self.delete,
            "node": self.target,
            "via": self.via,
            "user": self.plan.user,
            "vhost": self.plan.vhost,
            "items": [i.to_dict() for i in self.plan.items],
        }
        if not self.delete:
            doc["url"] = (self.url if show_password else mask_url(self.url)) if self.url else None
            doc["password_generated"] = self.plan.password_generated
            if show_password:
                doc["password"] = self.plan.password
            doc["verification"] = self.verification.to_dict() if self.verification else None
            doc["nodes"] = [c.to_dict() for c in self.nodes]
            doc["saved_to"] = str(self.saved_to) if self.saved_to else None
            doc["settings_changed"] = self.settings_changed
        doc["warnings"] = list(self.warnings)
        return doc


def _saved_url(path: Path) -> str | None:
    try:
        values, _ = read_config_file(path)
    except CeleryctlError:
        return None
    return values.get("broker_url")


def _private(path: Path) -> bool:
    try:
        return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    except OSError:
        return False


def _preload_pika() -> None:
    try:
        import pika  # noqa: F401
    except ImportError:  # pika missing: verify() imports it again and reports
        pass


def settings_path(settings: Settings, cwd: Path | None = None) -> Path:
    return settings.config_file or (cwd or Path.cwd()) / CONFIG_FILENAME


def setup(
    request: Request,
    settings: Settings,
    *,
    node: str | None = None,
    host: str | None = None,
    port: int | None = None,
    dry_run: bool = False,
    save_to: Path | None = None,
    broker: str | BrokerUrl | None = None,
    runner: Backend | None = None,
    api_password: str | None = None,
    on_progress: Progress | None = None,
    on_unsaved: Callable[[str], None] | None = None,
) -> SetupResult:
    """Provision the user, vhost, tags and permissions; verify over AMQP; save the URL.

    Everything is validated before the node is asked anything: the names, ``--node``, the URL
    to be saved (its host resolves) and the settings file (``save_to``; None: do not save).
    Should saving fail anyway, or Ctrl-C come, once the node may have been changed, the error
    says so and ``on_unsaved`` gets the URL with a generated password that nobody has otherwise.
    Through the management API when a management URL is set (``api_password``: the admin's,
    from ``--api-password-stdin``), else through rabbitmqctl.

    A cluster (celeryctl's local one, or ``broker``: a ``;`` list of its nodes' URLs, whose
    hosts and ports are used, not its credentials) is written once, through one running node;
    the login is then verified on every node at once and the saved URL lists them all.  A node
    that cannot be reached while others verified leaves the result saved, with ``result.error``
    (exit 6) naming it.
    """
    request.validate()
    target_broker = parse(broker, "--broker") if broker is not None else None
    with resolve_target(settings, node, host, port, broker=target_broker, api_password=api_password) as target:
        target.runner = runner or target.runner
        return _setup(request, settings, target, dry_run, save_to, on_progress, on_unsaved)


def _setup(
    request: Request,
    settings: Settings,
    target: Target,
    dry_run: bool,
    save_to: Path | None,
    on_progress: Progress | None,
    on_unsaved: Callable[[str], None] | None,
) -> SetupResult:
    say = on_progress or (lambda _m: None)
    for endpoint in target.endpoints:
        check_url(request, endpoint.host, endpoint.port, target.hosts_from)
    if save_to is not None and not dry_run:
        check_settings_file(save_to)
    if not dry_run:
        # pika's import (~70 ms) overlaps the reads and writes instead of delaying the verification.
        threading.Thread(target=_preload_pika, daemon=True).start()
    say(f"reading users, vhosts and permissions on {target.description}")
    state = read_state(target.runner, request)
    known, known_source = settings_password(settings, request.user)
    plan = plan_setup(request, state, known_password=known)
    plan.dry_run = dry_run
    result = SetupResult(plan, target.description, via=state.via)
    if request.password is None and not request.rotate_password and request.user in state.users:
        result.warnings += _unknown_password_warnings(request.user, plan, known, known_source)
    urls: list[tuple[str, int, str | None, str]] = []
    if plan.password is not None and not (dry_run and plan.password_generated):
        urls = [
            (
                e.host,
                e.port,
                e.node,
                build_amqp_url(request.user, plan.password, e.host, e.port, request.vhost, scheme=target.scheme),
            )
            for e in target.endpoints
        ]
        result.url = ";".join(u for *_, u in urls)  # one node, or Celery's failover list
    if dry_run:
        return result
    try:
        apply_plan(target.runner, plan, say)
        if result.url is None:
            result.verification = Verification(None, "the password is unknown")
        else:
            where = ", ".join(e.address for e in target.endpoints)
            say(f"verifying: logging in as {request.user} on vhost {request.vhost} at {where}")
            result.nodes = verify_nodes(urls, request)
            result.verification = combined(result.nodes)
            failed = [c for c in result.nodes if not c.ok]
            if failed and (len(failed) == len(result.nodes) or not all(c.unreachable for c in failed)):
                raise _verification_failed(result, failed)
        if save_to is not None:
            _save(result, settings, save_to, on_unsaved)
        if any(not c.ok for c in result.nodes):
            result.error = _nodes_unreachable(result, target, on_unsaved)
    except KeyboardInterrupt:
        raise _interrupted(result, on_unsaved) from None
    return result


def _unknown_password_warnings(user: str, plan: Plan, known: str | None, known_source: str | None) -> list[str]:
    """An existing user kept its password: say when celeryctl does not know it (so no URL, no login)."""
    if plan.password is not None:
        return []
    warnings = []
    if known is not None:
        warnings.append(f"the password for '{user}' in the settings ({known_source}) is no longer the user's")
    warnings.append(
        f"user '{user}' exists and its password is unknown to celeryctl, so the URL cannot "
        "include it and the login is not verified; set a new one with --rotate-password "
        "(or give it with --password-stdin)"
    )
    return warnings


def _verification_failed(result: SetupResult, failed: list[NodeCheck]) -> CeleryctlError:
    """Every node unreachable, or one refusing the login: an error, and nothing saved."""
    verification, plan = result.verification or failed[0].verification, result.plan
    cls: type[CeleryctlError] = UnreachableError if all(c.unreachable for c in failed) else AccessRefusedError
    where = mask_url(result.url or "") if len(result.nodes) == 1 else ", ".join(c.address for c in failed)
    return cls(
        f"verification failed: {verification.reason} ({where})",
        "the changes were applied; check --host/--port and the permissions, then run again"
        if plan.changed
        else "check --host/--port and the permissions",
        details={
            "items": [i.to_dict() for i in plan.items],
            "verification": verification.to_dict(),
            "nodes": [c.to_dict() for c in result.nodes],
        },
    )


def _nodes_unreachable(result: SetupResult, target: Target, on_unsaved: Callable[[str], None] | None) -> CeleryctlError:
    """Set up (users are cluster-wide) and verified on some nodes, but others did not answer."""
    down = [c for c in result.nodes if not c.ok]
    if result.saved_to is None:
        _keep_password(result, on_unsaved)
    names = ", ".join(c.address + (f" ({c.node})" if c.node else "") for c in down)
    why = f": {down[0].verification.reason}" if len(down) == 1 else ""
    done = "set up" if result.changed else "already set up"
    saved = f", the URL listing every node saved in {result.saved_to}" if result.saved_to else ""
    return UnreachableError(
        f"{names} {'is' if len(down) == 1 else 'are'} unreachable{why}; the rest succeeded: {done} through "
        f"{target.description}, the login verified on {len(result.nodes) - len(down)} of {len(result.nodes)} "
        f"nodes{saved} (users, vhosts and permissions are cluster-wide: a member gets them when it rejoins)",
        "start it (celeryctl broker start for celeryctl's cluster), then run the same command again "
        "to verify the login there",
        code="nodes_unreachable",
        details={**result.to_dict(), "provisioned": True, "unreachable": [c.address for c in down]},
    )


def _keep_password(result: SetupResult, on_unsaved: Callable[[str], None] | None) -> None:
    """Hand a generated password that may now be the user's to ``on_unsaved``."""
    if result.plan.password_generated and result.url is not None and on_unsaved is not None:
        on_unsaved(result.url)


def _again(result: SetupResult) -> str:
    """The way out once the node has the user but celeryctl's settings do not have its password."""
    plan = result.plan
    base = f"celeryctl setup-broker --user {shlex.quote(plan.user)} --vhost {shlex.quote(plan.vhost)}"
    if plan.password_generated:
        return (
            f"then, if you have the password, save it with `{base} --password-stdin`; "
            f"else set a new one with `{base} --rotate-password`"
        )
    return "then run the same command again: it changes only what is missing and saves the URL"


def _not_saved(
    result: SetupResult, save_to: Path, cause: CeleryctlError | OSError, on_unsaved: Callable[[str], None] | None
) -> CeleryctlError:
    denied = isinstance(cause, (PermissionError, PermissionDeniedError)) or (
        isinstance(cause, OSError) and cause.errno in (errno.EPERM, errno.EROFS)
    )
    reason = cause.message if isinstance(cause, CeleryctlError) else (cause.strerror or str(cause))
    _keep_password(result, on_unsaved)
    what = "the broker was changed" if result.plan.changed else "the broker is set up"
    password = f" (a new password for '{result.plan.user}')" if result.plan.password_generated else ""
    cls: type[CeleryctlError] = PermissionDeniedError if denied else ConfigError
    return cls(
        f"{what}{password} but the settings were NOT saved: cannot write {save_to}: {reason}",
        f"fix that (or use --config FILE), {_again(result)}",
        code="settings_not_saved",
        details={
            "broker_changed": result.plan.changed,
            "saved": False,
            "settings_file": str(save_to),
            "url": mask_url(result.url) if result.url else None,
            "password_generated": result.plan.password_generated,
            "items": [i.to_dict() for i in result.plan.items],
        },
    )


def _interrupted(result: SetupResult, on_unsaved: Callable[[str], None] | None) -> CeleryctlError:
    _keep_password(result, on_unsaved)
    changed = "may have been changed" if result.plan.changed else "was not changed"
    return CeleryctlError(
        f"interrupted: the broker {changed} and the settings were not saved",
        f"check with `celeryctl setup-broker --dry-run`; {_again(result)}",
        code="interrupted",
        exit_code=ExitCode.INTERRUPTED,
        details={
            "broker_changed": None if result.plan.changed else False,
            "saved": False,
            "url": mask_url(result.url) if result.url else None,
            "password_generated": result.plan.password_generated,
        },
    )


def _save(
    result: SetupResult, settings: Settings, save_to: Path, on_unsaved: Callable[[str], None] | None = None
) -> None:
    """Write the URL to the settings file (mode 0600) unless it is already there."""
    if result.url is None:
        result.warnings.append("nothing saved: the URL has no password")
        return
    result.saved_to = save_to
    source = settings.sources.get("broker_url", "")
    if source.startswith(("env", "flag")):
        result.warnings.append(
            f"the broker URL from {source} overrides the one saved in {save_to}; unset it to use the saved one"
        )
    result.settings_changed = _saved_url(save_to) != result.url or not _private(save_to)
    if result.settings_changed:
        try:
            save_settings(save_to, {"broker_url": result.url})
        except (CeleryctlError, OSError) as exc:  # the checks passed, yet the disk said no (full, raced)
            raise _not_saved(result, save_to, exc, on_unsaved) from None


def delete(
    user: str,
    vhost: str,
    settings: Settings,
    *,
    confirm: Callable[[Plan], bool],
    node: str | None = None,
    dry_run: bool = False,
    broker: str | BrokerUrl | None = None,
    runner: Backend | None = None,
    api_password: str | None = None,
    on_progress: Progress | None = None,
) -> SetupResult:
    """Delete the user and the vhost (with everything in it) after ``confirm(plan)`` says yes."""
    validate_name(user, "--user", "user name")
    validate_name(vhost, "--vhost", "vhost name")
    target_broker = parse(broker, "--broker") if broker is not None else None
    with resolve_target(
        settings, node, None, None, broker=target_broker, api_password=api_password, amqp=False
    ) as target:
        target.runner = runner or target.runner
        return _delete(user, vhost, settings, target, confirm, dry_run, on_progress)


def _delete(
    user: str,
    vhost: str,
    settings: Settings,
    target: Target,
    confirm: Callable[[Plan], bool],
    dry_run: bool,
    on_progress: Progress | None,
) -> SetupResult:
    say = on_progress or (lambda _m: None)
    say(f"reading users and vhosts on {target.description}")
    state = read_state(target.runner, Request(user=user, vhost=vhost))
    plan = plan_delete(user, vhost, state)
    plan.dry_run = dry_run
    result = SetupResult(plan, target.description, delete=True, via=state.via)
    if dry_run or not plan.changed:
        return result
    if not confirm(plan):
        raise NotConfirmedError(
            f"not confirmed: deleting user '{user}' and vhost '{vhost}' (with all its queues and messages); "
            "nothing was deleted",
            "add --yes to delete them (or run it on a terminal to be asked)",
            details={"items": [i.to_dict() for i in plan.items]},
        )
    apply_plan(target.runner, plan, say)
    _password, source = settings_password(settings, user)
    if source is not None:
        result.warnings.append(
            f"the broker URL from {source} is for the deleted user '{user}': "
            "run setup-broker again, or remove broker_url from it"
        )
    return result
