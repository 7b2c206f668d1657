"""What ``celeryctl setup-broker`` shows: the plan table, the result, what a failure left applied."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celeryctl import render
from celeryctl.broker import mask_url

if TYPE_CHECKING:
    from rich.table import Table

    from celeryctl.errors import CeleryctlError
    from celeryctl.rabbitmq.plan import Plan
    from celeryctl.rabbitmq.provision import SetupResult

_ACTION_STYLE = {"create": "green", "update": "yellow", "delete": "red", "unchanged": "dim"}
_STATUS_STYLE = {
    "applied": "green",
    "failed": "bold red",
    "not applied": "red",
    "unknown": "yellow",
    "planned": "cyan",
    "unchanged": "dim",
}


def items_table(items: list[dict[str, Any]], title: str) -> Table:
    """One row per plan item (as in ``--json``): item, action, current, desired, result."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for col in ("item", "action", "current", "desired", "result"):
        table.add_column(col)
    for it in items:
        action, status = str(it["action"]), str(it["status"])
        table.add_row(
            it["item"],
            f"[{_ACTION_STYLE.get(action, '')}]{action}[/]",
            escape(it["current"] if it["current"] is not None else "(absent)"),
            escape(it["desired"] if it["desired"] is not None else "(absent)"),
            f"[{_STATUS_STYLE.get(status, '')}]{status}[/]",
        )
    return table


def show_result(result: SetupResult, show_password: bool) -> None:
    """The plan table on stdout, then the verification, the URL (masked unless asked) and where it was saved."""
    from rich.markup import escape

    doc = result.to_dict(show_password=show_password)
    if result.plan.dry_run:
        title = f"plan for {result.target} (dry run: nothing changed)"
    else:
        title = f"{result.target}: " + ("changed" if result.changed else "nothing to change, all unchanged")
    render.out.print(items_table(doc["items"], title))
    if result.delete:
        return
    if result.verification is not None:
        style = {True: "green", False: "red", None: "yellow"}[result.verification.ok]
        render.out.print(f"verification: [{style}]{escape(result.verification.text)}[/]")
    if len(result.nodes) > 1:
        node_style = {"ok": "green", "unreachable": "red", "refused": "bold red"}
        for check in result.nodes:
            name = f" ({escape(check.node)})" if check.node else ""
            detail = "" if check.ok else f": {escape(check.verification.reason or '')}"
            render.out.print(f"  {escape(check.address)}{name}: [{node_style[check.status]}]{check.status}[/]{detail}")
    if result.url:
        shown = result.url if show_password else mask_url(result.url)
        render.out.print(f"broker URL: {escape(shown)}")
    if result.saved_to:
        render.out.print(
            f"saved to {escape(str(result.saved_to))} (mode 0600)"
            + ("" if result.settings_changed else ", already there")
        )
    if result.plan.password_generated and not result.plan.dry_run and not result.saved_to and not show_password:
        render.warn(
            "the generated password was neither saved nor shown; run again with --rotate-password --show-password"
        )


def show_to_delete(plan: Plan) -> None:
    """Before the --delete confirmation prompt: what would go (on stderr)."""
    render.err.print(items_table([i.to_dict() for i in plan.items], "to delete"))


def show_partial(exc: CeleryctlError) -> None:
    """On a failure midway, which items were applied (on stderr; --json has them in the error's details)."""
    items = exc.details.get("items") if isinstance(exc.details, dict) else None
    if isinstance(items, list):
        render.err.print(items_table(items, "what was applied before the failure"))


def keep_password(exc: CeleryctlError, url: str, *, show_password: bool, json_: bool) -> None:
    """A generated password that may now be the user's and is saved nowhere: keep it reachable.

    In the ``--json`` error with ``--show-password``; printed once on stderr when it is a
    terminal (or when ``--show-password`` asked for it), never into a file or a pipe otherwise.
    """
    from celeryctl.broker import url_password

    password = url_password(url) or ""
    if show_password:
        exc.details["url"] = url
        exc.details["password"] = password
    if render.err.is_terminal or (show_password and not json_):
        render.warn("the new password is saved nowhere and is shown this once; keep it:")
        render.err.print(f"  {password}", markup=False, highlight=False)
