"""celeryctl flower: run Flower, the web monitor, for the resolved broker and app."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from celeryctl.cli.options import ApiOpt, AppOpt, BackendOpt, BrokerOpt, DataDirOpt, port_parser, resolve


def flower(
    port: Annotated[
        int, typer.Option("--port", "-p", parser=port_parser(), metavar="PORT", help="HTTP port for Flower.")
    ] = 5555,
    address: Annotated[
        str, typer.Option("--address", metavar="ADDRESS", help="Address to listen on; other than loopback needs --basic-auth.")
    ] = "127.0.0.1",
    basic_auth: Annotated[
        str | None,
        typer.Option(
            "--basic-auth",
            metavar="USER[:PASSWORD]",
            help="USER:PASSWORD for HTTP basic auth, or USER to be asked for the password "
            "(env CELERYCTL_FLOWER_BASIC_AUTH; prefer the variable: a flag is visible in the process list).",
            show_default=False,
        ),
    ] = None,
    unsafe_no_auth: Annotated[
        bool, typer.Option("--unsafe-no-auth", help="Allow a non-loopback address without authentication.")
    ] = False,
    url_prefix: Annotated[
        str | None, typer.Option("--url-prefix", metavar="PATH", help="Serve under this path (behind a proxy).", show_default=False)
    ] = None,
    app_spec: AppOpt = None,
    broker: BrokerOpt = None,
    backend: BackendOpt = None,
    data_dir: DataDirOpt = None,
    api: ApiOpt = None,
) -> None:
    """Run Flower (the web monitor) for the resolved broker and app, in this process.

    Needs the flower extra: pip install 'celeryctl[flower]'.  Listens on 127.0.0.1 unless
    --address; another address without --basic-auth is refused unless --unsafe-no-auth.
    Flower gets the broker's management API (queue lengths) when one is set (--api,
    CELERYCTL_MANAGEMENT_URL) or celeryctl's node runs it (broker start --management).
    Passwords reach Flower through its environment, never through an argv.
    """
    from celeryctl import flower as core
    from celeryctl.celeryapp import app_broker, load_app
    from celeryctl.render.flower import announce

    settings = resolve(
        broker_url=broker,
        result_backend=backend,
        app=app_spec,
        data_dir=data_dir,
        flower_basic_auth=basic_auth,
        management_url=api,
    )
    core.require_flower()
    auth = settings.flower_basic_auth
    if auth and ":" not in auth and sys.stdin.isatty():
        password = typer.prompt(f"Flower password for {auth}", hide_input=True, confirmation_prompt=True, err=True)
        auth = f"{auth}:{password}"
    app = load_app(settings.app, settings)
    url = app_broker(app)
    plan = core.flower_plan(
        settings, url, port=port, address=address, basic_auth=auth, unsafe_no_auth=unsafe_no_auth, url_prefix=url_prefix
    )
    announce(plan, url)
    code = core.run_flower(app, plan)
    if code:
        raise typer.Exit(code)
