"""celeryctl setup-broker: idempotent RabbitMQ user, vhost, tags and permissions, verified over AMQP."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from celeryctl import render
from celeryctl.cli.options import ApiOpt, ConfigOpt, DataDirOpt, JsonOpt, port_parser, resolve
from celeryctl.errors import CeleryctlError, NotConfirmedError, UsageError
from celeryctl.rabbitmq import DEFAULT_PERMISSION, DEFAULT_USER, DEFAULT_VHOST
from celeryctl.render import setup_broker as view

if TYPE_CHECKING:
    from celeryctl.rabbitmq.plan import Plan
    from celeryctl.settings import Settings


def setup_broker(
    user: Annotated[
        str,
        typer.Option("--user", "-u", metavar="NAME", help="RabbitMQ user for the Celery app (created when missing)."),
    ] = DEFAULT_USER,
    vhost: Annotated[
        str, typer.Option("--vhost", metavar="NAME", help="Virtual host for the Celery app (created when missing).")
    ] = DEFAULT_VHOST,
    tags: Annotated[
        list[str] | None,
        typer.Option(
            "--tags",
            metavar="TAG",
            help="User tag, repeatable (e.g. management). Not given: a new user gets none, an existing one "
            "keeps its tags. --tags '' removes all tags.",
            show_default=False,
        ),
    ] = None,
    configure: Annotated[
        str,
        typer.Option("--configure", metavar="RE", help="Configure permission regex on the vhost ('' grants nothing)."),
    ] = DEFAULT_PERMISSION,
    write: Annotated[str, typer.Option("--write", metavar="RE", help="Write permission regex on the vhost.")] = (
        DEFAULT_PERMISSION
    ),
    read: Annotated[str, typer.Option("--read", metavar="RE", help="Read permission regex on the vhost.")] = (
        DEFAULT_PERMISSION
    ),
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin (one line).")
    ] = False,
    password_env: Annotated[
        str | None,
        typer.Option("--password-env", metavar="VAR", help="Read the password from this environment variable."),
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(
            "--password", metavar="TEXT", help="The password itself (visible to other users: prefer --password-stdin)."
        ),
    ] = None,
    rotate_password: Annotated[
        bool, typer.Option("--rotate-password", help="Give an existing user a new random password.")
    ] = False,
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            "-n",
            metavar="NODE",
            help="RabbitMQ node for rabbitmqctl (env CELERYCTL_NODE; default celeryctl's node when it runs, "
            "else the system node)",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            metavar="HOST",
            help="Host in the broker URL; it must resolve (default: the management API's host with --api, "
            "127.0.0.1 for celeryctl's node, else localhost)",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            metavar="PORT",
            parser=port_parser(),
            help="AMQP port in the broker URL (default: the AMQP listener the management API reports with --api, "
            "celeryctl's node's port, else 5672)",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and change nothing.")] = False,
    save: Annotated[
        bool,
        typer.Option(
            "--save/--no-save",
            help="Write broker_url to the settings file (--config, env CELERYCTL_CONFIG, else ./celeryctl.toml), "
            "mode 0600.",
        ),
    ] = True,
    show_password: Annotated[
        bool, typer.Option("--show-password", help="Print the URL with its password (and the password in --json).")
    ] = False,
    delete: Annotated[
        bool, typer.Option("--delete", help="Delete the user and the vhost (with its queues) instead.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before --delete.")] = False,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            "-b",
            metavar="URL",
            help="The broker's nodes: one AMQP URL or a cluster's ';'-separated list (its hosts and ports go "
            "into the saved URL and each is verified by a login; its user and password are not used). "
            "Default: celeryctl's node, or every member of its local cluster.",
            show_default=False,
        ),
    ] = None,
    api: ApiOpt = None,
    api_password_stdin: Annotated[
        bool,
        typer.Option(
            "--api-password-stdin",
            help="Read the management API admin's password from stdin (one line), when the management URL holds none.",
        ),
    ] = False,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Create or update the RabbitMQ user, vhost, tags and permissions for a Celery app, idempotently.

    Reads the node's current state, prints a plan (create, update, unchanged, delete per item),
    applies only the difference with the password on stdin (never in argv), then logs in over
    AMQP as the user to verify the permissions, and saves the broker URL to celeryctl.toml.
    A second identical run changes nothing. Default: user celery, vhost celery, permissions
    '.*' '.*' '.*' on that vhost only.

    With a management URL (--api URL, env CELERYCTL_MANAGEMENT_URL, or management_url in the
    settings file) the same plan is read and written through RabbitMQ's management HTTP API
    instead of rabbitmqctl: for a broker on another host, in a container or a managed service.
    Its admin must have the administrator tag; the login is the management URL's user and
    password, else --api-password-stdin, else the broker URL's. Users are written with a salted
    hash computed here, never the password. Without a management URL, rabbitmqctl is used.

    On a cluster (celeryctl's local cluster, or --broker 'amqp://h1:5672;amqp://h2:5672'), users,
    vhosts and permissions are cluster-wide: one run writes them through one running node, then
    logs in on every node at once; the saved URL lists every node (Celery's failover list). A node
    that cannot be reached is named, with exit 6, after the rest is done and saved.
    """
    from celeryctl.rabbitmq import provision
    from celeryctl.rabbitmq.plan import Request

    if password_stdin and api_password_stdin:
        raise UsageError(
            "--password-stdin and --api-password-stdin both read stdin: give one of them another way",
            "pass the new user's password with --password-env VAR, or the admin's in CELERYCTL_MANAGEMENT_URL",
        )
    settings = resolve(config, node=node, data_dir=data_dir, management_url=api)
    quiet = json_
    api_password = _read_api_password() if api_password_stdin else None
    if delete:
        _delete(user, vhost, settings, node, broker, api_password, dry_run=dry_run, yes=yes, json_=json_)
        return
    if password is not None:  # on stderr even with --json: it is about the command line just typed
        render.warn("--password is visible to other users of this machine (ps); prefer --password-stdin")
    explicit = provision.read_password(
        stdin_text=_read_stdin() if password_stdin else None, env_var=password_env, text=password
    )
    # No --tags: leave an existing user's tags alone; --tags "" alone: no tags.
    wanted_tags = [t for t in tags if t] if tags else None
    request = Request(
        user=user,
        vhost=vhost,
        tags=wanted_tags,
        configure=configure,
        write=write,
        read=read,
        password=explicit,
        rotate_password=rotate_password,
    )
    request.validate()  # before the spinner: bad input fails at once, with nothing asked of the node
    save_to = provision.settings_path(settings) if save and not dry_run else None
    unsaved: list[str] = []  # the URL with a generated password, should the run fail once it may be set
    try:
        with render.spinner("setting up RabbitMQ", quiet=quiet) as update:
            result = provision.setup(
                request,
                settings,
                node=node,
                host=host,
                port=port,
                dry_run=dry_run,
                save_to=save_to,
                broker=broker,
                api_password=api_password,
                on_progress=update,
                on_unsaved=unsaved.append,
            )
    except CeleryctlError as exc:
        if not json_:
            view.show_partial(exc)
        if unsaved:
            view.keep_password(exc, unsaved[-1], show_password=show_password, json_=json_)
        raise
    for message in result.warnings:
        if not quiet:
            render.warn(message)
    if result.error is not None:  # set up and saved, but a node was unreachable: the error carries the report
        if not json_:
            view.show_result(result, show_password)
        if unsaved:
            view.keep_password(result.error, unsaved[-1], show_password=show_password, json_=json_)
        raise result.error
    if json_:
        render.emit_json(render.ok_doc(**result.to_dict(show_password=show_password)))
    else:
        view.show_result(result, show_password)


def _read_stdin(prompt: str = "Password: ") -> str:
    if sys.stdin.isatty():  # typed by hand: do not echo it
        import getpass

        return getpass.getpass(prompt, stream=sys.stderr)
    return sys.stdin.read()


def _read_api_password() -> str:
    """The admin's password, one line on stdin."""
    lines = [x for x in _read_stdin("Management API password: ").splitlines() if x]
    if len(lines) != 1:
        raise UsageError(
            f"--api-password-stdin: stdin holds {'no line' if not lines else 'more than one line'}",
            "pipe exactly one line: the management API admin's password",
        )
    return lines[0]


def _delete(
    user: str,
    vhost: str,
    settings: Settings,
    node: str | None,
    broker: str | None,
    api_password: str | None,
    *,
    dry_run: bool,
    yes: bool,
    json_: bool,
) -> None:
    from celeryctl.rabbitmq import provision

    def confirm(plan: Plan) -> bool:
        if yes:
            return True
        if json_ or not sys.stdin.isatty():
            return False
        view.show_to_delete(plan)
        return typer.confirm(f"Delete user '{user}' and vhost '{vhost}' with all its queues and messages?", err=True)

    try:
        # No spinner while a confirmation prompt may be on the terminal.
        with render.spinner("reading RabbitMQ", quiet=json_ or not yes) as update:
            result = provision.delete(
                user,
                vhost,
                settings,
                confirm=confirm,
                node=node,
                broker=broker,
                dry_run=dry_run,
                api_password=api_password,
                on_progress=update,
            )
    except NotConfirmedError:
        raise  # nothing was tried: no report of what was applied
    except CeleryctlError as exc:
        if not json_:
            view.show_partial(exc)
        raise
    if not json_:
        for message in result.warnings:
            render.warn(message)
    if json_:
        render.emit_json(render.ok_doc(**result.to_dict()))
    else:
        view.show_result(result, False)
