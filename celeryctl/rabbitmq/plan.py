"""What the user wants, compared with what the node has: a plan of create/update/unchanged/delete items.

Pure: no runner, no subprocess, no network.  :func:`plan_setup` and :func:`plan_delete` take a
:class:`~celeryctl.rabbitmq.definitions.State` (read by :mod:`celeryctl.rabbitmq.definitions`,
or built by hand in a test) and say, per item, what changes and which write does it: a rabbitmqctl
call, or, for a state read through the management API, an HTTP request.
On a node read through ``export_definitions`` every write is folded into ONE
``import_definitions`` document holding only what the plan changes: the user entry carries a
salted SHA-256 hash, never the password, and a user whose password stays gets its current hash
back, so the import leaves the password alone.  Nodes read through ``list_*`` (no hashes) get
per-command writes, the password on stdin, independent ones in the same wave.  A state read
through the management API gets the same items; their steps are ``PUT``/``DELETE`` requests
(:func:`_use_api`), users written with a locally computed hash as well.
"""

from __future__ import annotations

import re
import secrets
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from celeryctl.errors import InternalError, UsageError
from celeryctl.rabbitmq import DEFAULT_PERMISSION, DEFAULT_USER, DEFAULT_VHOST
from celeryctl.rabbitmq.api import api_path
from celeryctl.rabbitmq.definitions import SHA256, State, UserState, hash_password, password_matches

MAX_NAME_BYTES = 255
# The names check_access uses: a queue "celeryctl.check.<hex>" reached through the default exchange.
PROBE_QUEUE = "celeryctl.check.000000000000"
PROBE_EXCHANGE = "amq.default"

CREATE, UPDATE, UNCHANGED, DELETE = "create", "update", "unchanged", "delete"


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


# --------------------------------------------------------------------------- request


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


# --------------------------------------------------------------------------- plan


@dataclass
class Step:
    """One write: a rabbitmqctl call, or a management API request (``method`` set)."""

    name: str  # import_definitions; fallback: add_user, change_password, add_vhost, set_user_tags, set_permissions
    args: list[str]  # (and delete_user, delete_vhost); API: "PUT /api/users/NAME", no args
    wave: int = 1
    stdin_password: bool = False
    stdin_doc: dict[str, Any] | None = None  # import_definitions: the definitions document
    status: str = "planned"  # planned | applied | failed | not applied
    error: str | None = None
    method: str | None = None  # the management API's PUT / DELETE
    path: str | None = None  # "api/users/NAME", percent-encoded
    body: dict[str, Any] | None = None  # users: password_hash, never the password

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


def _user_items(request: Request, state: State, known_password: str | None) -> tuple[list[Item], str | None, bool]:
    """The "user" and "password" items, the password the user will have (when known), and whether it is new."""
    user = request.user
    existing = state.users.get(user)
    if existing is None:
        generated = request.password is None
        add_user = Step("add_user", ["add_user", "--", user], stdin_password=True)
        return (
            [
                Item("user", CREATE, None, user, [add_user]),
                Item("password", CREATE, None, "generated" if generated else "given", [add_user]),
            ],
            request.password or secrets.token_urlsafe(24),
            generated,
        )
    item, password, generated = _password_item(request, state, existing, known_password)
    return [Item("user", UNCHANGED, user, user), item], password, generated


def _password_item(
    request: Request, state: State, existing: UserState, known_password: str | None
) -> tuple[Item, str | None, bool]:
    """An existing user's password: the given one, a rotated one, or kept (known when the settings hold it)."""
    change = Step("change_password", ["change_password", "--", request.user], stdin_password=True)
    if request.password is not None:
        if request.user in state.password_checked:
            same: bool | None = state.password_checked[request.user]
        else:
            same = password_matches(existing.password_hash, existing.hashing_algorithm, request.password)
        if same:
            return Item("password", UNCHANGED, "set", "given (same)"), request.password, False
        return Item("password", UPDATE, "set", "given", [change]), request.password, False
    if request.rotate_password:
        return Item("password", UPDATE, "set", "generated", [change]), secrets.token_urlsafe(24), True
    password = None
    if known_password is not None:
        same = password_matches(existing.password_hash, existing.hashing_algorithm, known_password)
        password = known_password if same is not False else None
    return Item("password", UNCHANGED, "set", "kept"), password, False


def _tags_item(user: str, existing: UserState | None, wanted: list[str], add_user: Step | None) -> Item:
    current = existing.tags if existing else None
    if existing is not None and sorted(current or []) == wanted:
        return Item("tags", UNCHANGED, _tags_text(current), _tags_text(wanted))
    if existing is None and not wanted and add_user is not None:
        # A new user starts without tags: creating it creates them.
        return Item("tags", CREATE, None, _tags_text([]), [add_user])
    exists = existing is not None
    step = Step("set_user_tags", ["set_user_tags", "--", user, *wanted], wave=1 if exists else 2)
    return Item("tags", UPDATE if exists else CREATE, _tags_text(current), _tags_text(wanted), [step])


def _permissions_item(request: Request, state: State, *, user_exists: bool, vhost_exists: bool) -> Item:
    current = state.permissions.get((request.user, request.vhost))
    wanted = request.permissions
    if current == wanted:
        return Item("permissions", UNCHANGED, _perm_text(current), _perm_text(wanted))
    step = Step(
        "set_permissions",
        ["set_permissions", "-p", request.vhost, "--", request.user, *wanted],
        wave=1 if (user_exists and vhost_exists) else 2,
    )
    action = UPDATE if current is not None else CREATE
    return Item("permissions", action, _perm_text(current), _perm_text(wanted), [step])


def plan_setup(request: Request, state: State, *, known_password: str | None = None) -> Plan:
    """Compare what is wanted with what is there; every item gets create/update/unchanged.

    ``known_password`` is the password celeryctl already knows for an existing user (from the
    settings file); it is only used for the URL, never written.
    """
    user, vhost = request.user, request.vhost
    existing = state.users.get(user)
    vhost_exists = vhost in state.vhosts
    items, password, generated = _user_items(request, state, known_password)
    if vhost_exists:
        items.append(Item("vhost", UNCHANGED, vhost, vhost))
    else:
        items.append(Item("vhost", CREATE, None, vhost, [Step("add_vhost", ["add_vhost", "--", vhost])]))
    current_tags = existing.tags if existing else None
    wanted_tags = sorted(set(request.tags)) if request.tags is not None else (current_tags or [])
    add_user = items[0].steps[0] if items[0].steps else None
    items.append(_tags_item(user, existing, wanted_tags, add_user))
    items.append(_permissions_item(request, state, user_exists=existing is not None, vhost_exists=vhost_exists))
    plan = Plan(
        user,
        vhost,
        items,
        password=password,
        password_generated=generated,
        tags=wanted_tags,
        permissions=request.permissions,
    )
    if state.via == "api":
        _use_api(plan, state)
    elif state.definitions:
        _use_import(plan, state)
    return plan


def api_step(method: str, segments: tuple[str, ...], body: dict[str, Any] | None = None, wave: int = 1) -> Step:
    path = api_path(*segments)
    return Step(f"{method} /{path}", [], wave=wave, method=method, path=path, body=body)


def _user_entry(plan: Plan, state: State, names: set[str]) -> tuple[str, str] | None:
    """The password hash (and its algorithm) a user write carries: a new one for a new password,
    else the current one, so that writing the tags leaves the password alone."""
    existing = state.users.get(plan.user)
    if "password" in names:  # a new user, or a new password
        return (hash_password(plan.password), SHA256) if plan.password is not None else None
    if existing is not None and existing.password_hash is not None:
        return existing.password_hash, existing.hashing_algorithm or SHA256
    return None


def _use_api(plan: Plan, state: State) -> None:
    """Replace the per-command steps by management API requests: the user (hash, tags) and the
    vhost first, the permissions (which need both) after them."""
    changed = {i.item: i for i in plan.items if i.steps}
    if not changed:
        return
    steps: dict[str, Step] = {}
    if changed.keys() & {"user", "password", "tags"}:
        entry = _user_entry(plan, state, set(changed))
        if entry is None:
            # Without a hash the API would clear the password (a PUT without one does): never guess.
            raise InternalError(f"internal: no password hash to write for user '{plan.user}'")
        body = {
            "password_hash": entry[0],
            "hashing_algorithm": entry[1],
            "tags": ",".join(plan.tags or []),  # required; a comma-separated string suits 3.x and 4.x
        }
        step = api_step("PUT", ("users", plan.user), body)
        for name in ("user", "password", "tags"):
            steps[name] = step
    if "vhost" in changed:
        steps["vhost"] = api_step("PUT", ("vhosts", plan.vhost), {})
    if "permissions" in changed and plan.permissions is not None:
        configure, write, read = plan.permissions
        body = {"configure": configure, "write": write, "read": read}
        after = bool(changed.keys() - {"permissions"})
        steps["permissions"] = api_step("PUT", ("permissions", plan.vhost, plan.user), body, wave=2 if after else 1)
    for name, item in changed.items():
        item.steps = [steps[name]]


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
    if state.via == "api":
        for item in items:
            if item.steps:
                item.steps = [api_step("DELETE", ("users" if item.item == "user" else "vhosts", item.current or ""))]
    return Plan(user, vhost, items)


def expected_access(request: Request) -> dict[str, bool]:
    """Which of the probe's operations the granted permissions allow ('' grants nothing)."""

    def allows(regex: str, *names: str) -> bool:
        return regex != "" and all(re.search(regex, n) for n in names)

    return {
        "configure": allows(request.configure, PROBE_QUEUE),
        "write": allows(request.write, PROBE_EXCHANGE),
        "read": allows(request.read, PROBE_QUEUE),
    }
