"""Desired state -> plan (diff against the node's current state) -> apply only the difference -> verify.

``setup-broker`` provisions one user, one vhost, the user's tags and its permissions on that
vhost.  The current state is read with one ``rabbitmqctl export_definitions`` call (users with
tags and salted password hashes, vhosts, permissions: 0.4 s, where three parallel ``list_*``
calls take 1 s on two cores); nodes without that command are read with ``list_*`` calls run in
parallel.  Because the definitions carry the password hash (base64 of a 4-byte salt and the
hash of salt + password), whether a known password is still the user's is decided without a
write and without a login.

Every change is then written in ONE ``rabbitmqctl import_definitions`` call (each call boots an
Erlang VM, ~0.45 CPU-seconds): a definitions document on stdin holding only what the plan
changes.  The user entry carries a salted SHA-256 hash, never the password; a user whose
password stays gets its current hash back, so the import leaves the password alone.  The node
applies the document before the call returns (the CLI's "asynchronous" message notwithstanding:
``rabbit_definitions:import_parsed`` waits for users, then vhosts, then permissions), touches
nothing the document does not name, and does not roll back: a failure midway leaves the earlier
categories applied, so on a failure the node is read again and every item reports whether it was
applied.  Nodes read through ``list_*`` (no hashes) get the per-command writes instead, with the
password on stdin (``add_user NAME`` / ``change_password NAME``), independent ones at the same
time in two waves.  Deletions use ``delete_user`` / ``delete_vhost``.  Running again converges
because every step is planned from the state found.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import stat
import threading
import unicodedata
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celeryctl.errors import (
    AccessRefusedError,
    CeleryctlError,
    CommandError,
    NotConfirmedError,
    UnreachableError,
    UsageError,
)
from celeryctl.rabbitmq import DEFAULT_PERMISSION, DEFAULT_USER, DEFAULT_VHOST
from celeryctl.rabbitmq.ctl import Runner, classify_failure
from celeryctl.settings import (
    CONFIG_FILENAME,
    Settings,
    build_amqp_url,
    mask_url,
    read_config_file,
    save_settings,
    url_password,
)

MAX_NAME_BYTES = 255
# The names check_access uses: a queue "celeryctl.check.<hex>" reached through the default exchange.
PROBE_QUEUE = "celeryctl.check.000000000000"
PROBE_EXCHANGE = "amq.default"

CREATE, UPDATE, UNCHANGED, DELETE = "create", "update", "unchanged", "delete"
Progress = Callable[[str], None]


# --------------------------------------------------------------------------- validation


def validate_name(value: str, flag: str, what: str) -> str:
    """A user, vhost or tag name rabbitmqctl accepts: non-empty, no control characters, <= 255 bytes."""
    if value == "":
        raise UsageError(f"{flag}: the {what} must not be empty", f"pass a name, e.g. {flag} celery")
    bad = [c for c in value if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    if bad:
        raise UsageError(
            f"{flag}: the {what} {value!r} contains a control character ({ascii(bad[0])})",
            "use printable characters only",
        )
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise UsageError(
            f"{flag}: the {what} is {len(value.encode('utf-8'))} bytes long, the limit is {MAX_NAME_BYTES}",
            "use a shorter name",
        )
    return value


def validate_tag(value: str) -> str:
    validate_name(value, "--tags", "tag")
    if any(c.isspace() or c == "," for c in value):
        raise UsageError(
            f"--tags: the tag {value!r} contains a space or a comma",
            "give each tag with its own --tags, e.g. --tags monitoring --tags management",
        )
    return value


def validate_regex(value: str, flag: str) -> str:
    """RabbitMQ matches permissions with unanchored regular expressions; '' grants nothing."""
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise UsageError(f"{flag}: the regular expression contains a control character", "use printable characters")
    try:
        re.compile(value)
    except re.error as exc:
        raise UsageError(
            f"{flag}: {value!r} is not a valid regular expression ({exc})",
            f"fix it, or quote it for the shell; e.g. {flag} '^celery\\..*' ('.*' allows everything, '' nothing)",
        ) from None
    return value


def validate_password(value: str, source: str) -> str:
    if value == "":
        raise UsageError(f"the password from {source} is empty", "give a non-empty password")
    if value != value.strip():
        # rabbitmqctl strips the line it reads, so such a password would not be the one set.
        raise UsageError(
            f"the password from {source} starts or ends with whitespace", "rabbitmqctl would strip it; remove it"
        )
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise UsageError(
            f"the password from {source} contains a control character or a line break",
            "rabbitmqctl reads one line; use printable characters",
        )
    return value


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


# --------------------------------------------------------------------------- request and state


@dataclass
class Request:
    """What the user wants."""

    user: str = DEFAULT_USER
    vhost: str = DEFAULT_VHOST
    tags: list[str] | None = None  # None: leave an existing user's tags alone; []: no tags
    configure: str = DEFAULT_PERMISSION
    write: str = DEFAULT_PERMISSION
    read: str = DEFAULT_PERMISSION
    password: str | None = None  # explicit; None: generate for a new user, keep for an existing one
    rotate_password: bool = False

    def validate(self) -> None:
        validate_name(self.user, "--user", "user name")
        validate_name(self.vhost, "--vhost", "vhost name")
        for tag in self.tags or []:
            validate_tag(tag)
        for flag, value in (("--configure", self.configure), ("--write", self.write), ("--read", self.read)):
            validate_regex(value, flag)
        if self.password is not None:
            validate_password(self.password, "the request")

    @property
    def permissions(self) -> tuple[str, str, str]:
        return (self.configure, self.write, self.read)


@dataclass
class UserState:
    name: str
    tags: list[str]
    password_hash: str | None = None
    hashing_algorithm: str | None = None


@dataclass
class State:
    """What the node has: users, vhosts and permissions (user, vhost) -> (configure, write, read)."""

    users: dict[str, UserState] = field(default_factory=dict)
    vhosts: set[str] = field(default_factory=set)
    permissions: dict[tuple[str, str], tuple[str, str, str]] = field(default_factory=dict)
    password_checked: dict[str, bool] = field(default_factory=dict)  # fallback reads: authenticate_user
    definitions: bool = False  # read with export_definitions: hashes known, changes go in one import
    tags_as_text: bool = False  # the node exports tags as "a,b" (3.8); the import gets them that way too


_HASHES: dict[str, Callable[[bytes], Any]] = {
    "rabbit_password_hashing_sha256": hashlib.sha256,
    "rabbit_password_hashing_sha512": hashlib.sha512,
    "rabbit_password_hashing_md5": hashlib.md5,
}


SHA256 = "rabbit_password_hashing_sha256"


def hash_password(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's salted SHA-256 password hash: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode("ascii")


def password_matches(password_hash: str | None, algorithm: str | None, password: str) -> bool | None:
    """Whether ``password`` is the one behind a RabbitMQ password hash; None when it cannot tell."""
    if not password_hash:
        return None if password_hash is None else False  # "" = no password: nothing matches
    digest = _HASHES.get(algorithm or "rabbit_password_hashing_sha256")
    if digest is None:
        return None
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except ValueError:
        return None
    salt, expected = raw[:4], raw[4:]
    return secrets.compare_digest(digest(salt + password.encode("utf-8")).digest(), expected)


def _definitions(result: Any) -> dict[str, Any]:
    # With --formatter json, 3.10 wraps the definitions as a JSON string in {"message": ...}.
    if isinstance(result, dict) and set(result) == {"message"} and isinstance(result["message"], str):
        result = json.loads(result["message"])
    if not isinstance(result, dict) or "users" not in result:
        raise CommandError("rabbitmqctl export_definitions returned something unexpected", "run with CELERYCTL_DEBUG=1")
    return result


def read_state(runner: Runner, request: Request | None = None) -> State:
    """The node's users, vhosts and permissions, from one ``export_definitions`` call.

    Falls back to ``list_users``, ``list_vhosts`` and ``list_user_permissions`` run in parallel
    on nodes older than 3.8.2 that lack the command.
    """
    try:
        defs = _definitions(runner.json("export_definitions", "-"))
    except CommandError as exc:
        if exc.returncode != 64:  # 64: usage / unknown command
            raise
        return read_state_parallel(runner, request)
    state = State(definitions=True)
    for u in defs.get("users", []):
        tags = u.get("tags") or []
        if isinstance(tags, str):  # 3.8 exports "tag1,tag2"
            state.tags_as_text = True
            tags = [t for t in tags.split(",") if t]
        state.users[u["name"]] = UserState(u["name"], sorted(tags), u.get("password_hash"), u.get("hashing_algorithm"))
    state.vhosts = {v["name"] for v in defs.get("vhosts", [])}
    for p in defs.get("permissions", []):
        state.permissions[(p["user"], p["vhost"])] = (p["configure"], p["write"], p["read"])
    return state


def read_state_parallel(runner: Runner, request: Request | None = None) -> State:
    """The same state from ``list_*`` calls run at the same time (each boots an Erlang VM).

    With a request, the user's password is checked with ``authenticate_user`` (password on stdin)
    in the same batch.
    """
    user = request.user if request else None
    names = [u["user"] for u in runner.json("list_users")] if user is None else [user]
    # Options go before "--": after it rabbitmqctl takes everything as a positional argument.
    calls: list[list[str]] = [["list_users"], ["list_vhosts", "name"]]
    calls += [["list_user_permissions", "--formatter", "json", "--", n] for n in names]
    check_pw = request is not None and request.password is not None

    def run(args: list[str]) -> Any:
        if args[0] == "list_user_permissions":
            return runner.run(*args, check=False)
        return runner.json(*args)

    def authenticate() -> bool:
        assert request is not None and request.password is not None
        res = runner.run(
            "authenticate_user",
            "--",
            request.user,
            stdin=request.password + "\n",
            secrets=[request.password],
            check=False,
        )
        return res.returncode == 0

    with ThreadPoolExecutor(max_workers=len(calls) + 1) as pool:
        futures = [pool.submit(run, c) for c in calls]
        auth = pool.submit(authenticate) if check_pw else None
        results = [f.result() for f in futures]
        authenticated = auth.result() if auth is not None else None
    state = State()
    for u in results[0]:
        tags = u.get("tags") or []
        if isinstance(tags, str):
            tags = [t for t in tags.strip("[]").replace(",", " ").split() if t]
        state.users[u["user"]] = UserState(u["user"], sorted(tags))
    state.vhosts = {v["name"] for v in results[1]}
    for name, res in zip(names, results[2:], strict=True):
        if res.returncode != 0:  # the user does not exist (67), or a real failure
            if name in state.users:
                raise classify_failure(res, runner.node)
            continue
        for p in res.json():
            state.permissions[(name, p["vhost"])] = (p["configure"], p["write"], p["read"])
    if authenticated is not None and request is not None and request.user in state.users:
        state.password_checked[request.user] = authenticated
    return state


# --------------------------------------------------------------------------- plan


@dataclass
class Step:
    """One rabbitmqctl write."""

    name: str  # import_definitions; fallback: add_user, change_password, add_vhost, set_user_tags, set_permissions
    args: list[str]  # (and delete_user, delete_vhost)
    wave: int = 1
    stdin_password: bool = False
    stdin_doc: dict[str, Any] | None = None  # import_definitions: the definitions document
    status: str = "planned"  # planned | applied | failed | not applied
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "status": self.status, "error": self.error}


@dataclass
class Item:
    """One row of the plan: user, password, vhost, tags or permissions."""

    item: str
    action: str  # create | update | unchanged | delete
    current: str | None
    desired: str | None
    steps: list[Step] = field(default_factory=list)
    outcome: str | None = None  # after a failed import: applied | not applied | unknown, as read back

    @property
    def status(self) -> str:
        if self.action == UNCHANGED:
            return "unchanged"
        if self.outcome is not None:
            return self.outcome
        states = {s.status for s in self.steps}
        for s in ("failed", "not applied", "planned"):
            if s in states:
                return s
        return "applied"

    def to_dict(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "action": self.action,
            "current": self.current,
            "desired": self.desired,
            "status": self.status,
            "steps": [s.name for s in self.steps],
        }


@dataclass
class Plan:
    user: str
    vhost: str
    items: list[Item]
    password: str | None = None  # the password the user will have, when known
    password_generated: bool = False
    dry_run: bool = False
    tags: list[str] | None = None  # the user's tags after the plan
    permissions: tuple[str, str, str] | None = None  # on the vhost, after the plan

    @property
    def steps(self) -> list[Step]:
        seen: dict[int, Step] = {}
        for item in self.items:
            for s in item.steps:
                seen.setdefault(id(s), s)
        return list(seen.values())

    @property
    def changed(self) -> bool:
        return any(i.action != UNCHANGED for i in self.items)

    def summary(self) -> dict[str, list[str]]:
        return {
            status: [s.name for s in self.steps if s.status == status]
            for status in ("applied", "failed", "not applied", "planned")
        }


def _perm_text(perms: tuple[str, str, str] | None) -> str | None:
    if perms is None:
        return None
    return "configure={!r} write={!r} read={!r}".format(*perms)


def _tags_text(tags: list[str] | None) -> str | None:
    if tags is None:
        return None
    return ", ".join(tags) if tags else "(none)"


def plan_setup(request: Request, state: State, *, known_password: str | None = None) -> Plan:
    """Compare what is wanted with what is there; every item gets create/update/unchanged.

    ``known_password`` is the password celeryctl already knows for an existing user (from the
    settings file); it is only used for the URL, never written.
    """
    user, vhost = request.user, request.vhost
    existing = state.users.get(user)
    user_exists = existing is not None
    vhost_exists = vhost in state.vhosts
    items: list[Item] = []
    password: str | None = None
    generated = False

    if not user_exists:
        password = request.password or secrets.token_urlsafe(24)
        generated = request.password is None
        add_user = Step("add_user", ["add_user", "--", user], stdin_password=True)
        items.append(Item("user", CREATE, None, user, [add_user]))
        items.append(Item("password", CREATE, None, "generated" if generated else "given", [add_user]))
    else:
        items.append(Item("user", UNCHANGED, user, user))
        assert existing is not None
        if request.password is not None:
            if user in state.password_checked:
                same: bool | None = state.password_checked[user]
            else:
                same = password_matches(existing.password_hash, existing.hashing_algorithm, request.password)
            password = request.password
            if same:
                items.append(Item("password", UNCHANGED, "set", "given (same)"))
            else:
                step = Step("change_password", ["change_password", "--", user], stdin_password=True)
                items.append(Item("password", UPDATE, "set", "given", [step]))
        elif request.rotate_password:
            password, generated = secrets.token_urlsafe(24), True
            step = Step("change_password", ["change_password", "--", user], stdin_password=True)
            items.append(Item("password", UPDATE, "set", "generated", [step]))
        else:
            if known_password is not None:
                same = password_matches(existing.password_hash, existing.hashing_algorithm, known_password)
                password = known_password if same is not False else None
            items.append(Item("password", UNCHANGED, "set", "kept"))

    if vhost_exists:
        items.append(Item("vhost", UNCHANGED, vhost, vhost))
    else:
        items.append(Item("vhost", CREATE, None, vhost, [Step("add_vhost", ["add_vhost", "--", vhost])]))

    current_tags = existing.tags if existing else None
    wanted_tags = sorted(set(request.tags)) if request.tags is not None else (current_tags or [])
    if existing is not None and sorted(current_tags or []) == wanted_tags:
        items.append(Item("tags", UNCHANGED, _tags_text(current_tags), _tags_text(wanted_tags)))
    elif existing is None and not wanted_tags:
        # A new user starts without tags: creating it creates them.
        items.append(Item("tags", CREATE, None, _tags_text([]), [items[0].steps[0]]))
    else:
        step = Step("set_user_tags", ["set_user_tags", "--", user, *wanted_tags], wave=1 if user_exists else 2)
        items.append(
            Item("tags", UPDATE if existing else CREATE, _tags_text(current_tags), _tags_text(wanted_tags), [step])
        )

    current_perms = state.permissions.get((user, vhost))
    wanted = request.permissions
    if current_perms == wanted:
        items.append(Item("permissions", UNCHANGED, _perm_text(current_perms), _perm_text(wanted)))
    else:
        step = Step(
            "set_permissions",
            ["set_permissions", "-p", vhost, "--", user, *wanted],
            wave=1 if (user_exists and vhost_exists) else 2,
        )
        action = UPDATE if current_perms is not None else CREATE
        items.append(Item("permissions", action, _perm_text(current_perms), _perm_text(wanted), [step]))
    plan = Plan(
        user, vhost, items, password=password, password_generated=generated, tags=wanted_tags, permissions=wanted
    )
    if state.definitions:
        _use_import(plan, state)
    return plan


def _use_import(plan: Plan, state: State) -> None:
    """Replace the per-command steps by one ``import_definitions`` holding only what changes."""
    changed = [i for i in plan.items if i.steps]
    if not changed:
        return
    names = {i.item for i in changed}
    doc: dict[str, Any] = {}
    if names & {"user", "password", "tags"}:
        existing = state.users.get(plan.user)
        if "password" in names:  # a new user, or a new password
            if plan.password is None:
                return
            pw_hash, algorithm = hash_password(plan.password), SHA256
        elif existing is not None and existing.password_hash is not None:
            # The current hash goes back unchanged, so the import keeps the user's password.
            pw_hash, algorithm = existing.password_hash, existing.hashing_algorithm or SHA256
        else:
            return  # no hash to keep: the per-command writes leave the password alone
        tags = plan.tags or []
        doc["users"] = [
            {
                "name": plan.user,
                "password_hash": pw_hash,
                "hashing_algorithm": algorithm,
                "tags": ",".join(tags) if state.tags_as_text else tags,
            }
        ]
    if "vhost" in names:
        doc["vhosts"] = [{"name": plan.vhost}]
    if "permissions" in names and plan.permissions is not None:
        configure, write, read = plan.permissions
        doc["permissions"] = [
            {"user": plan.user, "vhost": plan.vhost, "configure": configure, "write": write, "read": read}
        ]
    # No file argument: 3.10 reads stdin only then ("-" is taken as a file name).
    step = Step("import_definitions", ["import_definitions", "--format", "json"], stdin_doc=doc)
    for item in changed:
        item.steps = [step]


def plan_delete(user: str, vhost: str, state: State) -> Plan:
    items = []
    if user in state.users:
        items.append(Item("user", DELETE, user, None, [Step("delete_user", ["delete_user", "--", user])]))
    else:
        items.append(Item("user", UNCHANGED, None, None))
    if vhost in state.vhosts:
        items.append(Item("vhost", DELETE, vhost, None, [Step("delete_vhost", ["delete_vhost", "--", vhost])]))
    else:
        items.append(Item("vhost", UNCHANGED, None, None))
    return Plan(user, vhost, items)


# --------------------------------------------------------------------------- apply


def _run_step(runner: Runner, step: Step, password: str | None) -> None:
    if step.stdin_doc is not None:
        # Hashes are redacted too, should an error message echo the document.
        hashes = [u.get("password_hash", "") for u in step.stdin_doc.get("users", [])]
        runner.run(*step.args, stdin=json.dumps(step.stdin_doc), secrets=[password or "", *hashes])
    elif step.stdin_password:
        if not password:
            raise CeleryctlError(f"internal: {step.name} without a password")
        runner.run(*step.args, stdin=password + "\n", secrets=[password])
    else:
        runner.run(*step.args)


def _reached(item: Item, plan: Plan, state: State) -> bool:
    """Whether the node (as read again) has what ``item`` asked for."""
    user = state.users.get(plan.user)
    if item.item == "vhost":
        return plan.vhost in state.vhosts
    if item.item == "permissions":
        return state.permissions.get((plan.user, plan.vhost)) == plan.permissions
    if user is None:
        return False
    if item.item == "password":
        return (
            plan.password is None or password_matches(user.password_hash, user.hashing_algorithm, plan.password) is True
        )
    if item.item == "tags":
        return user.tags == sorted(plan.tags or [])
    return True  # "user": it exists


def _read_back(runner: Runner, plan: Plan) -> None:
    """After a failed import: which items the node has now (RabbitMQ does not roll an import back)."""
    try:
        state = read_state(runner)
    except CeleryctlError:
        state = None
    for item in plan.items:
        if item.action == UNCHANGED:
            continue
        if state is None:
            item.outcome = "unknown"
        else:
            item.outcome = "applied" if _reached(item, plan, state) else "not applied"


def apply_plan(runner: Runner, plan: Plan, on_progress: Progress | None = None) -> None:
    """Run the plan's steps: one import, or per-command writes, independent ones at the same time.

    On a failure the error is re-raised with ``details`` listing the steps applied, failed and
    not applied, and the plan's items with their status.  A failed import is followed by one read
    of the node, so each item says whether it was applied (or "unknown" when the node cannot be read).
    """
    say = on_progress or (lambda _m: None)
    steps = plan.steps
    workers = max(1, min(len(steps), os.cpu_count() or 2))
    first_error: CeleryctlError | None = None
    for wave in (1, 2):
        batch = [s for s in steps if s.wave == wave]
        if not batch:
            continue
        if first_error is not None:
            for s in batch:
                s.status = "not applied"
            continue
        say("applying: " + ", ".join(s.name for s in batch))
        with ThreadPoolExecutor(max_workers=min(workers, len(batch))) as pool:
            futures = [(s, pool.submit(_run_step, runner, s, plan.password)) for s in batch]
            for s, fut in futures:
                try:
                    fut.result()
                    s.status = "applied"
                except CeleryctlError as exc:
                    s.status, s.error = "failed", exc.message
                    first_error = first_error or exc
    if first_error is None:
        return
    imported = any(s.stdin_doc is not None for s in steps)
    if imported:
        say("the import failed: reading the node again to see what was applied")
        _read_back(runner, plan)
    summary = plan.summary()
    first_error.details.update(
        {
            "applied": summary["applied"],
            "failed": summary["failed"],
            "not_applied": summary["not applied"],
            "items": [i.to_dict() for i in plan.items],
        }
    )
    if imported:
        changed = [i for i in plan.items if i.action != UNCHANGED]
        if any(i.status == "unknown" for i in changed):
            first_error.message += " (the node could not be read afterwards: which changes were applied is unknown)"
        else:
            applied = ", ".join(i.item for i in changed if i.status == "applied") or "nothing"
            missing = ", ".join(i.item for i in changed if i.status != "applied") or "nothing"
            first_error.message += f" (applied: {applied}; not applied: {missing})"
    else:
        applied = ", ".join(summary["applied"]) or "nothing"
        not_applied = ", ".join(summary["failed"] + summary["not applied"])
        first_error.message = f"{first_error.message} (applied: {applied}; not applied: {not_applied})"
    first_error.hint = (first_error.hint + "; " if first_error.hint else "") + (
        "then run the same command again: it applies only what is missing"
    )
    raise first_error


# --------------------------------------------------------------------------- verify


def expected_access(request: Request) -> dict[str, bool]:
    """Which of the probe's operations the granted permissions allow ('' grants nothing)."""

    def allows(regex: str, *names: str) -> bool:
        return regex != "" and all(re.search(regex, n) for n in names)

    return {
        "configure": allows(request.configure, PROBE_QUEUE),
        "write": allows(request.write, PROBE_EXCHANGE),
        "read": allows(request.read, PROBE_QUEUE),
    }


@dataclass
class Verification:
    ok: bool | None  # None: skipped
    reason: str | None = None
    expected: dict[str, bool] = field(default_factory=dict)
    report: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reason": self.reason, "expected": self.expected, "access": self.report}

    @property
    def text(self) -> str:
        if self.ok is None:
            return f"skipped: {self.reason}"
        return ("ok: " if self.ok else "FAILED: ") + (self.reason or "")


def verify(url: str, request: Request, timeout: float = 5.0) -> Verification:
    """Log in as the user on the vhost and try what the permissions allow."""
    from celeryctl.probe import check_access

    expected = expected_access(request)
    report = check_access(url, timeout=timeout, check_permissions=any(expected.values()))
    doc = report.to_dict()
    if report.server is None:  # never logged in
        return Verification(False, report.error or "login failed", expected, doc)
    refused = [p for p, want in expected.items() if want and getattr(report, p) is False]
    if refused:
        return Verification(False, f"{' and '.join(refused)} refused although granted", expected, doc)
    if report.kind not in (None, "permissions"):
        return Verification(False, report.error or "the check failed", expected, doc)
    tried = [p for p, want in expected.items() if want]
    if expected["configure"] and expected["write"] and expected["read"]:
        what = "logged in, declared, published and consumed a temporary queue"
    elif tried:
        what = f"logged in; {', '.join(tried)} allowed as granted"
    else:
        what = "logged in (no permission to try)"
    return Verification(True, what, expected, doc)


# --------------------------------------------------------------------------- target and the whole command


@dataclass
class Target:
    runner: Runner
    description: str
    host: str
    port: int


def resolve_target(settings: Settings, node: str | None, host: str | None, port: int | None) -> Target:
    """``--node`` (or CELERYCTL_NODE) > celeryctl's running node > the system node."""
    from celeryctl.rabbitmq.node import HOST, Node

    node = node or settings.node
    if node:
        return Target(Runner(node=node), f"node {node}", host or "localhost", port or 5672)
    private = Node(settings.data_dir / "node")
    info = private.running_info()
    if info is not None:
        return Target(private.runner(info), f"celeryctl's node {info.name}", host or HOST, port or info.port)
    return Target(Runner(), "the system node", host or "localhost", port or 5672)


def settings_password(settings: Settings, user: str) -> tuple[str | None, str | None]:
    """The password the settings hold for ``user`` (and where from), if their broker URL is that user's."""
    url = settings.broker_url
    if not url:
        return None, None
    from urllib.parse import unquote, urlsplit

    try:
        username = urlsplit(url).username
    except ValueError:
        return None, None
    if username is None or unquote(username) != user:
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

    @property
    def changed(self) -> bool:
        return self.plan.changed

    def to_dict(self, *, show_password: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "changed": self.changed,
            "dry_run": self.plan.dry_run,
            "delete": self.delete,
            "node": self.target,
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
    except Exception:  # noqa: BLE001 - verify() imports it again and reports
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
    runner: Runner | None = None,
    on_progress: Progress | None = None,
) -> SetupResult:
    """Provision the user, vhost, tags and permissions; verify over AMQP; save the URL.

    Everything is validated before the node is asked anything.  ``save_to`` None: do not save.
    """
    say = on_progress or (lambda _m: None)
    request.validate()
    if not dry_run:
        # pika's import (~70 ms) overlaps the rabbitmqctl calls instead of delaying the verification.
        threading.Thread(target=_preload_pika, daemon=True).start()
    target = resolve_target(settings, node, host, port)
    if runner is not None:
        target.runner = runner
    say(f"reading users, vhosts and permissions on {target.description}")
    state = read_state(target.runner, request)
    known, known_source = settings_password(settings, request.user)
    plan = plan_setup(request, state, known_password=known)
    plan.dry_run = dry_run
    result = SetupResult(plan, target.description)
    if request.password is None and not request.rotate_password and request.user in state.users:
        if known is not None and plan.password is None:
            result.warnings.append(
                f"the password for '{request.user}' in the settings ({known_source}) is no longer the user's"
            )
        if plan.password is None:
            result.warnings.append(
                f"user '{request.user}' exists and its password is unknown to celeryctl, so the URL cannot "
                "include it and the login is not verified; set a new one with --rotate-password "
                "(or give it with --password-stdin)"
            )
    if plan.password is not None and not (dry_run and plan.password_generated):
        result.url = build_amqp_url(request.user, plan.password, target.host, target.port, request.vhost)
    if dry_run:
        return result
    apply_plan(target.runner, plan, say)
    if result.url is None:
        result.verification = Verification(None, "the password is unknown")
    else:
        say(f"verifying: logging in as {request.user} on vhost {request.vhost} at {target.host}:{target.port}")
        result.verification = verify(result.url, request)
        if not result.verification.ok:
            report = result.verification.report or {}
            cls: type[CeleryctlError] = (
                UnreachableError if report.get("kind") in ("refused", "timeout", "dns") else AccessRefusedError
            )
            raise cls(
                f"verification failed: {result.verification.reason} ({mask_url(result.url)})",
                "the changes were applied; check --host/--port and the permissions, then run again"
                if plan.changed
                else "check --host/--port and the permissions",
                details={"items": [i.to_dict() for i in plan.items], "verification": result.verification.to_dict()},
            )
    if save_to is not None and result.url is not None:
        result.saved_to = save_to
        source = settings.sources.get("broker_url", "")
        if source.startswith(("env", "flag")):
            result.warnings.append(
                f"the broker URL from {source} overrides the one saved in {save_to}; unset it to use the saved one"
            )
        result.settings_changed = _saved_url(save_to) != result.url or not _private(save_to)
        if result.settings_changed:
            save_settings(save_to, {"broker_url": result.url})
    elif save_to is not None:
        result.warnings.append("nothing saved: the URL has no password")
    return result


def delete(
    user: str,
    vhost: str,
    settings: Settings,
    *,
    confirm: Callable[[Plan], bool],
    node: str | None = None,
    dry_run: bool = False,
    runner: Runner | None = None,
    on_progress: Progress | None = None,
) -> SetupResult:
    """Delete the user and the vhost (with everything in it) after ``confirm(plan)`` says yes."""
    say = on_progress or (lambda _m: None)
    validate_name(user, "--user", "user name")
    validate_name(vhost, "--vhost", "vhost name")
    target = resolve_target(settings, node, None, None)
    if runner is not None:
        target.runner = runner
    say(f"reading users and vhosts on {target.description}")
    plan = plan_delete(user, vhost, read_state(target.runner))
    plan.dry_run = dry_run
    result = SetupResult(plan, target.description, delete=True)
    if dry_run or not plan.changed:
        return result
    if not confirm(plan):
        raise NotConfirmedError(
            f"not deleting user '{user}' and vhost '{vhost}' (with all its queues and messages)",
            "add --yes to confirm",
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
