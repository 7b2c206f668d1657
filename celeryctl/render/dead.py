"""``celeryctl dead`` for people: the dead-lettered tasks as a table; what replay and drop did."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeryctl import render

if TYPE_CHECKING:
    from celeryctl.deadletters import DeadLetter, Listing, Outcome

ARGS_WIDTH = 40


def shorten(text: str | None, width: int = ARGS_WIDTH) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def arguments(letter: DeadLetter) -> str:
    if letter.args is None and letter.kwargs is None:
        return "-"
    args = letter.args or "()"
    kwargs = letter.kwargs if letter.kwargs not in (None, "{}") else ""
    return shorten(f"{args} {kwargs}" if kwargs else args)


def why(letter: DeadLetter) -> str:
    reason = {"delivery_limit": "delivery limit"}.get(letter.reason or "", letter.reason or "?")
    return reason if letter.is_task else f"{reason} (not a Celery task, {letter.size} bytes)"


def print_listing(listing: Listing) -> None:
    from rich.table import Table

    out = render.out
    names = ", ".join(q.name for q in listing.queues)
    if not listing.queues:
        out.print(f"no dead-letter queue on vhost {render.escape(listing.vhost)}")
        return
    if not listing.tasks:
        out.print(f"no dead-lettered tasks in {render.escape(names)}")
        return
    table = Table(
        title=f"dead-lettered tasks in {names}", title_justify="left", title_style="bold", box=None, pad_edge=False
    )
    # The id is what `dead replay ID` takes: never cut, wrapped only when the terminal is too narrow.
    table.add_column("id", min_width=min(36, max(len(t.key) for t in listing.tasks)), overflow="fold")
    table.add_column("task", overflow="fold")
    table.add_column("arguments")
    table.add_column("why")
    table.add_column("deliveries", justify="right")
    table.add_column("when (UTC)")
    table.add_column("from", overflow="fold")
    for t in listing.tasks:
        table.add_row(
            render.literal(t.key),
            render.literal(t.task or "-"),
            render.literal(arguments(t)),
            render.literal(why(t)),
            str(t.deliveries) if t.deliveries is not None else "-",
            t.died_at.strftime("%Y-%m-%d %H:%M:%S") if t.died_at else "-",
            render.literal(t.source or "-"),
        )
    out.print(table)
    if len(listing.tasks) < listing.count:
        out.print(f"showing {len(listing.tasks):,} of {listing.count:,} (--limit N shows more)")
    else:
        out.print(f"{listing.count:,} dead-lettered task(s)")


def print_outcome(outcome: Outcome) -> None:
    past = "replayed" if outcome.action == "replay" else "dropped"
    for t in outcome.done:
        where = f" to {t.source}" if outcome.action == "replay" and t.source else ""
        render.out.print(render.literal(f"{past} {t.key} ({t.task or 'not a Celery task'}){where}"))
    if not outcome.done:
        render.out.print(f"nothing {past}")
