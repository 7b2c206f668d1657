"""Options shared by commands, each naming its CELERYCTL_* variable, and settings resolution."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from celeryctl import render
from celeryctl.settings import Settings, load_settings

# --------------------------------------------------------------------------- value parsers
# Typer ``parser=`` callables built on celeryctl.validate: a bad value is a usage error (exit 2)
# naming the flag and its value, raised before anything runs ("Invalid value for '--timeout':
# must be a finite number of seconds, got 'nan' (for example 2.5)").


def _bad_parameter(exc: Exception) -> typer.BadParameter:
    from celeryctl.errors import CeleryctlError

    if isinstance(exc, CeleryctlError):
        message = exc.message.strip()
        return typer.BadParameter(f"{message} ({exc.hint})" if exc.hint else message)
    return typer.BadParameter(str(exc))


def _parser(check: Callable[[Any], Any], default_type: type | None = None) -> Callable[[Any], Any]:
    """A Typer ``parser=``: ``check`` (from celeryctl.validate) with its UsageError as click's
    BadParameter; a value already of ``default_type`` is an option's default and passes as it is."""
    from celeryctl.errors import UsageError

    def parse(value: Any) -> Any:
        if default_type is not None and isinstance(value, default_type):
            return value
        try:
            return check(value)
        except UsageError as exc:
            raise _bad_parameter(exc) from None

    return parse


def seconds_parser(*, minimum: float = 0.0, allow_zero: bool = True) -> Any:
    """A parser for a duration option: a finite number of seconds, at least ``minimum``."""
    from celeryctl import validate

    return _parser(lambda v: validate.seconds(v, "", minimum=minimum, allow_zero=allow_zero), float)


def port_parser(*, low: int = 1, high: int = 65535) -> Any:
    """A parser for a port option: an integer from ``low`` to ``high``."""
    from celeryctl import validate

    return _parser(lambda v: validate.port(v, "", low=low, high=high), int)


def count_parser(*, low: int = 1, high: int | None = None) -> Any:
    """A parser for a whole-number option (a count, a priority): from ``low`` to ``high``."""
    from celeryctl import validate

    return _parser(lambda v: validate.count(v, "", low=low, high=high), int)


def _queue_list(value: str) -> str:
    from celeryctl import validate

    for name in value.split(","):
        if name.strip():
            validate.queue_name(name.strip())
    return value


def parse_worker_name(value: str) -> str:
    """A parser for a worker's node name (``w1`` or ``w1@host``)."""
    from celeryctl import validate

    return str(_parser(lambda v: validate.worker_name(v, ""))(value))


def parse_queue_name(value: str) -> str:
    """A parser for a queue-name option (``-Q``): non-empty, at most 255 bytes."""
    from celeryctl import validate

    return str(_parser(validate.queue_name)(value))


def parse_queue_list(value: str) -> str:
    """A parser for a comma-separated list of queue names (``worker -Q a,b``): each one checked."""
    return str(_parser(_queue_list)(value))


# --------------------------------------------------------------------------- help


def _argument_name(param: Any, *, usage: bool) -> str:
    name = str(param.metavar or param.name.upper())
    if param.nargs != 1 and not name.endswith("..."):
        name += "..."
    return f"[{name}]" if usage and not param.required else name


class PlainHelpCommand(TyperCommand):
    """A command whose help names each argument by its metavar alone (``submit [OPTIONS] TASK
    [ARGS...]``), where typer writes ``{TASK}`` in the usage line and ``<list[str]>`` beside it.
    Register commands that take arguments with ``app.command(NAME, cls=PlainHelpCommand)``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(_argument_name(param, usage=True))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        arguments: list[tuple[str, str]] = []
        opts: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            if getattr(param, "hidden", False):
                continue
            if param.param_type_name == "argument":
                arguments.append((_argument_name(param, usage=False), getattr(param, "help", None) or ""))
            else:
                record = param.get_help_record(ctx)
                if record is not None:
                    opts.append(record)
        for title, rows in (("Arguments", arguments), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


# --------------------------------------------------------------------------- options


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        help="Settings file (env CELERYCTL_CONFIG; default ./celeryctl.toml)",
        show_default=False,
    ),
]
BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker",
        "-b",
        metavar="URL",
        help="Broker URL (env CELERYCTL_BROKER_URL; default celeryctl's node, else amqp://guest@localhost:5672//)",
        show_default=False,
    ),
]
ApiOpt = Annotated[
    str | None,
    typer.Option(
        "--api",
        metavar="URL",
        help="The broker's management HTTP API, http(s)://[USER@]HOST:15672/ (env CELERYCTL_MANAGEMENT_URL, "
        "which may hold the password). The login is the URL's user, else the broker URL's. Monitoring "
        "commands also use celeryctl's node's API when it runs the management plugin; setup-broker only "
        "a URL given.",
        show_default=False,
    ),
]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        metavar="URL",
        help="Result backend URL (env CELERYCTL_RESULT_BACKEND; default rpc://)", show_default=False
    ),
]
AppOpt = Annotated[
    str | None,
    typer.Option(
        "--app",
        "-A",
        metavar="MODULE[:ATTR]",
        help="Celery app MODULE[:ATTRIBUTE] (env CELERYCTL_APP; default the built-in demo app)",
        show_default=False,
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        metavar="DIR",
        help="Where celeryctl keeps its node (env CELERYCTL_DATA_DIR; default ~/.local/share/celeryctl)",
        show_default=False,
    ),
]


def _queue_type(value: str) -> str:
    from celeryctl.topology import check_queue_type

    return check_queue_type(value, "")


QueueTypeOpt = Annotated[
    str | None,
    typer.Option(
        "--queue-type",
        parser=_parser(_queue_type),
        metavar="TYPE",
        help="quorum (delivery limit, dead letters) or classic, for the queues celeryctl declares (env "
        "CELERYCTL_QUEUE_TYPE; default quorum for the demo app and apps calling celeryctl.configure(app), "
        "what the app declares for others).",
        show_default=False,
    ),
]
MaxDeliveriesOpt = Annotated[
    int | None,
    typer.Option(
        "--max-deliveries",
        parser=count_parser(low=1, high=1000),
        metavar="N",
        help="Deliveries of a task before it is dead-lettered to QUEUE.dead, on quorum queues "
        "(env CELERYCTL_MAX_DELIVERIES; default 5).",
        show_default=False,
    ),
]
QueuesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--queues",
        "-Q",
        parser=parse_queue_list,
        metavar="QUEUES",
        help="Queues the worker consumes, comma-separated or repeated (default celery).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (errors too).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show more detail.")]
# queues, status and top:
QueueNamesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--queue",
        "-Q",
        parser=parse_queue_name,
        metavar="QUEUE",
        help="Also look up this queue (repeat it); needed for queues other than the app's on a remote broker.",
        show_default=False,
    ),
]
AllOpt = Annotated[
    bool, typer.Option("--all", help="Include Celery's internal queues (remote control, events, replies).")
]


def config_path(config: Path | None = None) -> Path | None:
    """The settings file named by ``--config``: the command's own, else the root's
    (``celeryctl --config FILE COMMAND``), read from click's context."""
    if config is not None:
        return config
    try:  # typer >= 0.20 vendors click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer uses click itself
        from click import get_current_context  # type: ignore[no-redef]
    ctx = get_current_context(silent=True)
    root = ctx.find_root().params.get("config") if ctx is not None else None
    return Path(root) if root else None


def resolve(config: Path | None = None, **flags: Any) -> Settings:
    """Load settings with these flag values on top; print settings-file warnings on stderr."""
    settings = load_settings(flags, config=config_path(config))
    for message in settings.warnings:
        render.warn(message)
    return settings
