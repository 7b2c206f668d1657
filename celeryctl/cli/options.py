"""Options shared by commands, each naming its CELERYCTL_* variable, and settings resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from celeryctl import render
from celeryctl.settings import Settings, load_settings

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
        help="Broker URL (env CELERYCTL_BROKER_URL; default celeryctl's node, else amqp://guest@localhost:5672//)",
        show_default=False,
    ),
]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend", help="Result backend URL (env CELERYCTL_RESULT_BACKEND; default rpc://)", show_default=False
    ),
]
AppOpt = Annotated[
    str | None,
    typer.Option(
        "--app",
        "-A",
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
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout (errors too).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show more detail.")]
# queues, status and top:
QueueNamesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--queue",
        "-Q",
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


# --------------------------------------------------------------------------- value parsers
# Typer ``parser=`` callables built on celeryctl.validate: a bad value is a usage error (exit 2)
# naming the flag's value, raised before anything runs.


def _bad_parameter(exc: Exception) -> typer.BadParameter:
    from celeryctl.errors import CeleryctlError

    if isinstance(exc, CeleryctlError) and exc.hint:
        return typer.BadParameter(f"{exc.message} ({exc.hint})")
    return typer.BadParameter(str(exc))


def seconds_parser(*, minimum: float = 0.0, allow_zero: bool = True) -> Any:
    """A parser for a duration option: a finite number of seconds, at least ``minimum``."""
    from celeryctl import validate
    from celeryctl.errors import UsageError

    def parse(value: str | float) -> float:
        if isinstance(value, float):  # a default
            return value
        try:
            return validate.seconds(value, "the value", minimum=minimum, allow_zero=allow_zero)
        except UsageError as exc:
            raise _bad_parameter(exc) from None

    return parse


def port_parser(*, low: int = 1, high: int = 65535) -> Any:
    """A parser for a port option: an integer from ``low`` to ``high``."""
    from celeryctl import validate
    from celeryctl.errors import UsageError

    def parse(value: str | int) -> int:
        if isinstance(value, int):  # a default
            return value
        try:
            return validate.port(value, "the port", low=low, high=high)
        except UsageError as exc:
            raise _bad_parameter(exc) from None

    return parse


def parse_queue_name(value: str) -> str:
    """A parser for a queue-name option (``-Q``): non-empty, at most 255 bytes."""
    from celeryctl import validate
    from celeryctl.errors import UsageError

    try:
        return validate.queue_name(value)
    except UsageError as exc:
        raise _bad_parameter(exc) from None
