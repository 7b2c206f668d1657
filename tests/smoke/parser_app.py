"""A tiny Typer app using celeryctl's ``parser=`` option helpers, run by test_min_versions.

celeryctl's commands take optional numbers checked by ``typer.Option(parser=...)``
(``celeryctl.cli.options``); this proves that the lowest declared typer accepts that form with
``float | None`` / ``int | None`` annotations under ``from __future__ import annotations``.
Prints ``timeout=<value> port=<value>``; a bad value is click's usage error (exit 2).
"""

from __future__ import annotations

from typing import Annotated

import typer

from celeryctl.cli import options

app = typer.Typer(add_completion=False)


@app.command()
def check(
    timeout: Annotated[float | None, typer.Option("--timeout", parser=options.seconds_parser())] = None,
    port: Annotated[int | None, typer.Option("--port", parser=options.port_parser())] = None,
    queue: Annotated[list[str] | None, typer.Option("--queue", parser=options.parse_queue_name)] = None,
) -> None:
    """Print the parsed values."""
    print(f"timeout={timeout} port={port} queues={queue or []}")


if __name__ == "__main__":
    app()
