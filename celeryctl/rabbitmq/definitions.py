"""Reading what a node has: users (tags, password hashes), vhosts and permissions.

The current state is read with one ``rabbitmqctl export_definitions`` call (users with tags and
salted password hashes, vhosts, permissions: 0.4 s, where three parallel ``list_*`` calls take
1 s on two cores); nodes without that command are read with ``list_*`` calls run in parallel.
Because the definitions carry the password hash (base64 of a 4-byte salt and the hash of
salt + password), whether a known password is still the user's is decided without a write and
without a login (:func:`password_matches`).

Through the management API (:class:`~celeryctl.rabbitmq.api.ManagementApi`) the read is scoped
to the request: ``GET /api/users/USER``, ``/api/vhosts/VHOST`` and
``/api/permissions/VHOST/USER`` (404: absent), three requests of a few milliseconds, which carry
the same hashes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeryctl.errors import CommandError, InternalError
from celeryctl.rabbitmq.ctl import classify_failure

if TYPE_CHECKING:
    from celeryctl.rabbitmq.api import ManagementApi
    from celeryctl.rabbitmq.ctl import Runner
    from celeryctl.rabbitmq.plan import Request

    #: What setup-broker writes through: rabbitmqctl against a node, or a management API.
    Backend = Runner | ManagementApi

SHA256 = "rabbit_password_hashing_sha256"
_HASHES: dict[str, Callable[[bytes], Any]] = {
    SHA256: hashlib.sha256,
    "rabbit_password_hashing_sha512": hashlib.sha512,
    "rabbit_password_hashing_md5": hashlib.md5,
}


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
    via: str = "rabbitmqctl"  # or "api": read through the management API, written through it too


# --------------------------------------------------------------------------- password hashes


def hash_password(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's salted SHA-256 password hash: base64(salt + sha256(salt + password))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode("ascii")


def password_matches(password_hash: str | None, algorithm: str | None, password: str) -> bool | None:
    """Whether ``password`` is the one behind a RabbitMQ password hash; None when it cannot tell."""
    if not password_hash:
        return None if password_hash is None else False  # "" = no password: nothing matches
    digest = _HASHES.get(algorithm or SHA256)
    if digest is None:
        return None
    try:
        raw = base64.b64decode(password_hash, validate=True)
    except ValueError:
        return None
    salt, expected = raw[:4], raw[4:]
    return secrets.compare_digest(digest(salt + password.encode("utf-8")).digest(), expected)


# --------------------------------------------------------------------------- reading


def _definitions(result: Any) -> dict[str, Any]:
    # With --formatter json, 3.10 wraps the definitions as a JSON string in {"message": ...}.
    if isinstance(result, dict) and set(result) == {"message"} and isinstance(result["message"], str):
        result = json.loads(result["message"])
    if not isinstance(result, dict) or "users" not in result:
        raise CommandError("rabbitmqctl export_definitions returned something unexpected", "run with CELERYCTL_DEBUG=1")
    return result


def _tag_list(tags: Any) -> list[str]:
    if isinstance(tags, str):  # 3.8 exports "tag1,tag2"; old APIs answer that way too
        return sorted(t for t in tags.split(",") if t)
    return sorted(tags or [])


def read_state(runner: Backend, request: Request | None = None) -> State:
    """The node's users, vhosts and permissions, from one ``export_definitions`` call.

    Falls back to ``list_users``, ``list_vhosts`` and ``list_user_permissions`` run in parallel
    on nodes older than 3.8.2 that lack the command.  Given a management API, reads through it
    (:func:`read_state_api`: only the request's user, vhost and permissions).
    """
    from celeryctl.rabbitmq.ctl import Runner

    if not isinstance(runner, Runner):
        if request is None:
            raise InternalError("internal: reading through the management API needs the request's names")
        return read_state_api(runner, request)
    try:
        defs = _definitions(runner.json("export_definitions", "-"))
    except CommandError as exc:
        if exc.returncode != 64:  # 64: usage / unknown command
            raise
        return read_state_parallel(runner, request)
    state = State(definitions=True)
    for u in defs.get("users", []):
        state.tags_as_text = state.tags_as_text or isinstance(u.get("tags"), str)
        state.users[u["name"]] = UserState(
            u["name"], _tag_list(u.get("tags")), u.get("password_hash"), u.get("hashing_algorithm")
        )
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


def read_state_api(api: ManagementApi, request: Request) -> State:
    """The request's user (tags, hash), vhost and permissions, through the management API.

    Needs the ``administrator`` tag (the API answers 401 "Not administrator user" otherwise: exit 5).
    """
    from celeryctl.rabbitmq.api import api_path

    state = State(via="api")
    user = api.get(api_path("users", request.user), missing_ok=True)
    if user is not None:
        state.users[request.user] = UserState(
            request.user, _tag_list(user.get("tags")), user.get("password_hash"), user.get("hashing_algorithm")
        )
    if api.get(api_path("vhosts", request.vhost), missing_ok=True) is not None:
        state.vhosts.add(request.vhost)
    if user is not None and state.vhosts:
        p = api.get(api_path("permissions", request.vhost, request.user), missing_ok=True)
        if p is not None:
            state.permissions[(request.user, request.vhost)] = (p["configure"], p["write"], p["read"])
    return state
