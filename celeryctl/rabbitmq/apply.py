"""Applying a plan (rabbitmqctl or the management API), reading the node back after a failure, verifying by AMQP login.

Every change of a node read through ``export_definitions`` is written in ONE ``rabbitmqctl
import_definitions`` call (each call boots an Erlang VM, ~0.45 CPU-seconds).  The node applies
the document before the call returns (the CLI's "asynchronous" message notwithstanding:
``rabbit_definitions:import_parsed`` waits for users, then vhosts, then permissions), touches
nothing the document does not name, and does not roll back: a failure midway leaves the earlier
categories applied, so on a failure the node is read again and every item reports whether it was
applied.  Per-command writes (nodes read through ``list_*``) run in two waves, the independent
ones of a wave at the same time, the password on stdin.  Deletions use ``delete_user`` /
``delete_vhost``.  Through the management API each step is one request, sent in order (user and
vhost, then the permissions): a few milliseconds each, no process started.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeryctl.errors import CeleryctlError, InternalError
from celeryctl.rabbitmq.definitions import State, password_matches, read_state
from celeryctl.rabbitmq.plan import DELETE, UNCHANGED, Item, Plan, Request, Step, expected_access

if TYPE_CHECKING:
    from celeryctl.rabbitmq.definitions import Backend

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- apply


def _run_step(runner: Backend, step: Step, password: str | None) -> None:
    from celeryctl.rabbitmq.ctl import Runner

    if step.method is not None:
        if isinstance(runner, Runner) or step.path is None:
            raise InternalError(f"internal: {step.name} needs the management API")
        runner.request(step.method, step.path, step.body, missing_ok=step.method == "DELETE")
        return
    if not isinstance(runner, Runner):
        raise InternalError(f"internal: {step.name} needs rabbitmqctl")
    if step.stdin_doc is not None:
        # Hashes are redacted too, should an error message echo the document.
        hashes = [u.get("password_hash", "") for u in step.stdin_doc.get("users", [])]
        runner.run(*step.args, stdin=json.dumps(step.stdin_doc), secrets=[password or "", *hashes])
    elif step.stdin_password:
        if not password:
            raise InternalError(f"internal: {step.name} without a password")
        runner.run(*step.args, stdin=password + "\n", secrets=[password])
    else:
        runner.run(*step.args)


def _reached(item: Item, plan: Plan, state: State) -> bool:
    """Whether the node (as read again) has what ``item`` asked for."""
    user = state.users.get(plan.user)
    if item.action == DELETE:
        return (plan.vhost not in state.vhosts) if item.item == "vhost" else user is None
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


def _read_back(runner: Backend, plan: Plan) -> None:
    """After a failed import or API request: which items the node has now (RabbitMQ does not roll
    an import back; a request that timed out may have been applied)."""
    try:
        state = read_state(runner, Request(user=plan.user, vhost=plan.vhost))
    except CeleryctlError:
        state = None
    for item in plan.items:
        if item.action == UNCHANGED:
            continue
        if state is None:
            item.outcome = "unknown"
        else:
            item.outcome = "applied" if _reached(item, plan, state) else "not applied"


def apply_plan(runner: Backend, plan: Plan, on_progress: Progress | None = None) -> None:
    """Run the plan's steps: one import, API requests in order, or per-command writes, independent
    ones at the same time.

    On a failure the error is re-raised with ``details`` listing the steps applied, failed and
    not applied, and the plan's items with their status.  A failed import is followed by one read
    of the node, so each item says whether it was applied (or "unknown" when the node cannot be read).
    """
    say = on_progress or (lambda _m: None)
    steps = plan.steps
    # API requests go one at a time: one HTTP session, and each takes milliseconds.
    api = any(s.method is not None for s in steps)
    workers = 1 if api else max(1, min(len(steps), os.cpu_count() or 2))
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
    if first_error is not None:
        _explain_failure(first_error, runner, plan, say)
        raise first_error


def _explain_failure(error: CeleryctlError, runner: Backend, plan: Plan, say: Progress) -> None:
    """Say in ``error`` what was applied before it (reading the node again after an import or
    an API request)."""
    imported = any(s.stdin_doc is not None or s.method is not None for s in plan.steps)
    if imported:
        what = "the import failed: reading the node" if plan.steps[0].method is None else "a request failed: reading it"
        say(f"{what} again to see what was applied")
        _read_back(runner, plan)
    summary = plan.summary()
    error.details.update(
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
            error.message += " (the node could not be read afterwards: which changes were applied is unknown)"
        else:
            applied = ", ".join(i.item for i in changed if i.status == "applied") or "nothing"
            missing = ", ".join(i.item for i in changed if i.status != "applied") or "nothing"
            error.message += f" (applied: {applied}; not applied: {missing})"
    else:
        applied = ", ".join(summary["applied"]) or "nothing"
        not_applied = ", ".join(summary["failed"] + summary["not applied"])
        error.message = f"{error.message} (applied: {applied}; not applied: {not_applied})"
    error.hint = (
        error.hint + "; " if error.hint else ""
    ) + "then run the same command again: it applies only what is missing"


# --------------------------------------------------------------------------- verify


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


# Refusals by a node that answered; any other failure (refused or lost connection, timeout, an
# unknown host, a node that died after the login) means the node could not be reached.
_REFUSALS = ("auth", "vhost", "permissions", "blocked")


@dataclass
class NodeCheck:
    """The verification on one node of the broker (one host:port of the saved URL)."""

    host: str
    port: int
    node: str | None
    verification: Verification

    @property
    def address(self) -> str:
        from celeryctl.broker.url import Host

        return str(Host(self.host, self.port))

    @property
    def ok(self) -> bool:
        return self.verification.ok is True

    @property
    def unreachable(self) -> bool:
        return not self.ok and (self.verification.report or {}).get("kind") not in _REFUSALS

    @property
    def status(self) -> str:
        return "ok" if self.ok else "unreachable" if self.unreachable else "refused"

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "host": self.host,
            "port": self.port,
            "node": self.node,
            "ok": self.ok,
            "status": self.status,
            "reason": self.verification.reason,
        }


def verify_nodes(
    urls: list[tuple[str, int, str | None, str]], request: Request, timeout: float = 5.0
) -> list[NodeCheck]:
    """:func:`verify` on every node at once: ``urls`` holds (host, port, node name, single-host URL)."""
    if len(urls) == 1:
        host, port, node, url = urls[0]
        return [NodeCheck(host, port, node, verify(url, request, timeout))]
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        futures = [(h, p, n, pool.submit(verify, url, request, timeout)) for h, p, n, url in urls]
        return [NodeCheck(h, p, n, fut.result()) for h, p, n, fut in futures]


def combined(checks: list[NodeCheck]) -> Verification:
    """One verification for all the nodes: ok when every node is; else naming the nodes that are not."""
    if len(checks) == 1:
        return checks[0].verification
    first_ok = next((c for c in checks if c.ok), None)
    shown = first_ok or checks[0]
    failed = [c for c in checks if not c.ok]
    if not failed:
        return Verification(
            True,
            f"{shown.verification.reason} on each of the {len(checks)} nodes",
            shown.verification.expected,
            shown.verification.report,
        )
    reasons = "; ".join(f"{c.address} {c.status}: {c.verification.reason}" for c in failed)
    return Verification(
        False,
        f"{len(checks) - len(failed)} of {len(checks)} nodes verified; {reasons}",
        shown.verification.expected,
        shown.verification.report,
    )
