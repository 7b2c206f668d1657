"""celeryctl dead [QUEUE] | dead replay | dead drop: the dead-lettered tasks, and acting on them."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from celeryctl import render
from celeryctl.cli.options import (
    AppOpt,
    BrokerOpt,
    DataDirOpt,
    JsonOpt,
    PlainHelpCommand,
    count_parser,
    parse_queue_name,
    resolve,
)
from celeryctl.errors import NotConfirmedError, UsageError

if TYPE_CHECKING:
    from celeryctl.deadletters import Outcome
    from celeryctl.settings import Settings


class DeadGroup(TyperGroup):
    """``dead`` alone, or followed by anything that is not ``replay``/``drop``, is ``dead list``:
    ``celeryctl dead``, ``celeryctl dead celery --json`` and ``celeryctl dead replay ID`` all work."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["list", *args]
        return list(super().parse_args(ctx, args))


app = typer.Typer(
    cls=DeadGroup,
    help="Dead-lettered tasks (QUEUE.dead): list them, replay them on their queue, or drop them.\n\n"
    "celeryctl dead [QUEUE] lists; celeryctl dead replay ID... and celeryctl dead drop ID... act on them.",
    no_args_is_help=False,
    rich_markup_mode=None,  # plain click help: typer.rich_utils alone costs ~50 ms of start-up
)

QueueArg = Annotated[
    str | None,
    typer.Argument(
        parser=parse_queue_name,
        metavar="QUEUE",
        help="The app queue (celery) or its dead-letter queue (celery.dead); default: the app's queues.",
        show_default=False,
    ),
]
KeysArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="ID...",
        help="Task ids (or the sha1:... keys `celeryctl dead` shows for messages that are not tasks); "
        "with --all, queue names instead.",
        show_default=False,
    ),
]
QueuesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--queue",
        "-Q",
        parser=parse_queue_name,
        metavar="QUEUE",
        help="An app queue (or its QUEUE.dead) whose dead-letter queue to read; repeat it. "
        "Default: the app's queues.",
        show_default=False,
    ),
]
AllFlag = Annotated[bool, typer.Option("--all", help="Every message of the dead-letter queue(s).")]
LimitOpt = Annotated[
    int,
    typer.Option(
        "--limit", "-n", metavar="N", parser=count_parser(low=1), help="Show at most N messages (default 100)."
    ),
]


def _targets(settings: Settings, queues: list[str]) -> tuple[str, list[str], bool]:
    from celeryctl.deadletters import resolve_queues

    return resolve_queues(settings, queues)


@app.command("list", cls=PlainHelpCommand)
def list_(
    queue: QueueArg = None,
    extra: QueuesOpt = None,
    limit: LimitOpt = 100,
    json_: JsonOpt = False,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """List dead-lettered tasks: id, task, arguments, why, deliveries, when, from which queue.

    QUEUE names an app queue (its dead-letter queue QUEUE.dead is read); without it, the
    dead-letter queues of the app's queues (-A; celery without it).  Nothing is removed or
    reordered: messages are read without acknowledgement and all go back in place.
    """
    from celeryctl import deadletters
    from celeryctl.render.dead import print_listing

    settings = resolve(broker_url=broker, app=app_spec, data_dir=data_dir)
    url, names, explicit = _targets(settings, [*([queue] if queue else []), *(extra or [])])
    listing = deadletters.list_dead(
        url, names, explicit=explicit, limit=limit, max_deliveries=settings.max_deliveries
    )
    if json_:
        render.emit_json(render.ok_doc(**listing.to_dict()))
    else:
        print_listing(listing)


def _keys_and_queues(keys: list[str] | None, all_: bool, extra: list[str] | None) -> tuple[list[str] | None, list[str]]:
    from celeryctl import validate

    given = list(keys or [])
    if all_:
        return None, [validate.queue_name(q) for q in given] + list(extra or [])
    if not given:
        raise UsageError("name the task ids, or pass --all", "see celeryctl dead --help; celeryctl dead lists the ids")
    return given, list(extra or [])


def _finish(outcome: Outcome, json_: bool) -> None:
    from celeryctl.deadletters import incomplete_error
    from celeryctl.render.dead import print_outcome

    if not outcome.complete:
        if not json_:
            print_outcome(outcome)
        raise incomplete_error(outcome)
    if json_:
        render.emit_json(render.ok_doc(**outcome.to_dict()))
    else:
        print_outcome(outcome)


@app.command("replay", cls=PlainHelpCommand)
def replay(
    keys: KeysArg = None,
    all_: AllFlag = False,
    extra: QueuesOpt = None,
    json_: JsonOpt = False,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Put dead-lettered tasks back on the queue they died in (ID..., or --all [QUEUE...]).

    Each is republished with publisher confirms and removed from the dead-letter queue only once
    the broker confirmed it.  Ids not found, or tasks that could not be replayed: named, exit 1,
    after the others were replayed.
    """
    from celeryctl import deadletters

    wanted, queues = _keys_and_queues(keys, all_, extra)
    settings = resolve(broker_url=broker, app=app_spec, data_dir=data_dir)
    url, names, explicit = _targets(settings, queues)
    outcome = deadletters.replay(url, names, wanted, explicit=explicit, max_deliveries=settings.max_deliveries)
    _finish(outcome, json_)


@app.command("drop", cls=PlainHelpCommand)
def drop(
    keys: KeysArg = None,
    all_: AllFlag = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Confirm --all (required when not on a terminal).")] = False,
    extra: QueuesOpt = None,
    json_: JsonOpt = False,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Remove dead-lettered tasks for good (ID..., or --all --yes [QUEUE...]).

    --all asks on a terminal and otherwise refuses without --yes (exit 11, nothing deleted).
    Ids not found: named, exit 1, after the others were dropped.
    """
    from celeryctl import deadletters
    from celeryctl.broker import mask_url

    wanted, queues = _keys_and_queues(keys, all_, extra)
    settings = resolve(broker_url=broker, app=app_spec, data_dir=data_dir)
    url, names, explicit = _targets(settings, queues)
    if wanted is None and not yes:
        what = f"dropping every dead-lettered task of {', '.join(names)}"
        if json_ or not sys.stdin.isatty():
            raise NotConfirmedError(f"not confirmed: {what}; nothing was deleted", "add --yes to drop them")
        if not typer.confirm(f"Drop every dead-lettered task of {', '.join(names)} on {mask_url(url)}?", err=True):
            raise NotConfirmedError(f"not confirmed: {what}; nothing was deleted", "answer y, or pass --yes")
    outcome = deadletters.drop(url, names, wanted, explicit=explicit, max_deliveries=settings.max_deliveries)
    _finish(outcome, json_)
