"""Rich consoles, tables, spinners and the JSON envelope.

stdout carries data (a result, a URL, one JSON document); stderr carries everything meant for
people (progress, warnings, errors).  Animations only run when stderr is a terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    out: Console
    err: Console

_consoles: dict[str, Console] = {}


def __getattr__(name: str) -> Console:
    # The consoles are made on first use: importing rich.console costs ~20 ms that
    # `--help` and argument errors should not pay.
    if name not in ("out", "err"):
        raise AttributeError(name)
    if name not in _consoles:
        from rich.console import Console

        # emoji=False: a ":x:" in a task's result or an exception is text, not an emoji; user text
        # in markup strings goes through escape(), in tables through literal().
        _consoles[name] = Console(stderr=name == "err", highlight=False, soft_wrap=True, emoji=False)
    return _consoles[name]


def _err() -> Console:
    # Module __getattr__ serves other modules only; code in this module gets the console here.
    return __getattr__("err")


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)


def literal(text: object, style: str = "") -> Text:
    """A table cell or line that Rich shows exactly as given: no markup, no emoji."""
    from rich.text import Text

    return Text(str(text), style=style)


def emit_json(doc: dict[str, Any]) -> None:
    """Print exactly one JSON document on stdout."""
    import json

    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def ok_doc(**data: Any) -> dict[str, Any]:
    return {"ok": True, **data}


def error_doc(error: dict[str, Any]) -> dict[str, Any]:
    return {"ok": False, "error": error}


def print_error(message: str, hint: str | None = None, details: list[str] | None = None) -> None:
    _err().print(f"[bold red]error:[/] {escape(message)}")
    for line in details or []:
        _err().print(f"  [dim]{escape(line)}[/]")
    if hint:
        _err().print(f"[yellow]hint:[/] {escape(hint)}")


def warn(message: str) -> None:
    _err().print(f"[yellow]warning:[/] {escape(message)}")


def info(message: str) -> None:
    _err().print(escape(message))


@contextmanager
def spinner(message: str, *, quiet: bool = False) -> Iterator[Any]:
    """A spinner on stderr while a slow step runs; plain lines when stderr is not a terminal.

    Yields a function that updates the message.
    """
    if quiet:
        yield lambda _msg: None
        return
    if not _err().is_terminal:

        def update(msg: str) -> None:
            _err().print(escape(msg))

        update(message)
        yield update
        return
    with _err().status(escape(message)) as status:
        yield lambda msg: status.update(escape(msg))
