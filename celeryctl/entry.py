"""The ``celeryctl`` console script.

``celeryctl probe worker`` is run by orchestrators every few seconds, so it answers without
loading the CLI (Typer, Click, Rich: ~100 ms): its common forms are parsed here and answered by
:mod:`celeryctl.health` in a few tens of milliseconds.  Anything else, and any form this parser
does not know (``--help``, a bad value, an error to explain), goes to the full CLI, which defines
the command (:mod:`celeryctl.cli.probe`) and prints the same line.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    args = sys.argv[1:]
    if args[:2] == ["probe", "worker"]:
        code = fast_probe(args[2:])
        if code is not None:
            sys.exit(code)
    from celeryctl.cli import main as full

    full()


def _options(args: list[str]) -> dict[str, object] | None:
    """``probe worker``'s options, or None for anything the full CLI should handle."""
    opts: dict[str, object] = {"name": None, "file": None, "max_age": None, "ready": False, "beat": False, "json": False}
    opts["data_dir"] = None
    flags = {"--ready": "ready", "--beat": "beat", "--json": "json"}
    values = {"--file": "file", "-f": "file", "--max-age": "max_age", "--data-dir": "data_dir"}
    i = 0
    while i < len(args):
        arg = args[i]
        key, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if key in flags and not inline:
            opts[flags[key]] = True
        elif key in values:
            if inline:
                value = inline
            elif i + 1 < len(args):
                i += 1
                value = args[i]
            else:
                return None
            if not value or value.startswith("-"):
                return None
            opts[values[key]] = value
        elif not arg.startswith("-") and opts["name"] is None:
            opts["name"] = arg
        else:
            return None
        i += 1
    from celeryctl import validate
    from celeryctl.errors import UsageError

    try:  # the same checks as the full CLI's parsers; a bad value is theirs to explain
        if opts["max_age"] is not None:
            opts["max_age"] = validate.seconds(opts["max_age"], allow_zero=False)
        if opts["name"] is not None:
            validate.worker_name(str(opts["name"]))
    except UsageError:
        return None
    return opts


def fast_probe(args: list[str]) -> int | None:
    """Answer ``probe worker ARGS``; None when the full CLI must (it then answers the same)."""
    opts = _options(args)
    if opts is None:
        return None
    from celeryctl import health
    from celeryctl.errors import CeleryctlError
    from celeryctl.render.probe import show_verdict

    file = Path(str(opts["file"])) if opts["file"] is not None else None
    max_age = opts["max_age"] if opts["max_age"] is not None else health.DEFAULT_MAX_AGE
    try:
        data_dir = None
        if file is None:
            from celeryctl.settings import load_settings

            settings = load_settings({"data_dir": opts["data_dir"]})
            if settings.warnings:  # the full CLI prints them
                return None
            data_dir = settings.data_dir
        verdict = health.probe(
            file=file,
            data_dir=data_dir,
            name=str(opts["name"]) if opts["name"] else None,
            max_age=float(str(max_age)),
            ready=bool(opts["ready"]),
            beat=bool(opts["beat"]),
        )
    except CeleryctlError:  # explained by the full CLI, with its hint and exit code
        return None
    return show_verdict(verdict, bool(opts["json"]))
