"""The root Typer app, its registration of commands, and the one error boundary."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Annotated

import typer

from celeryctl import __version__, render
from celeryctl.cli import options
from celeryctl.errors import CeleryctlError, ExitCode, InterruptedError_

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import ClickException  # type: ignore[assignment]

    try:
        from click.exceptions import NoArgsIsHelpError  # type: ignore[assignment,no-redef]
    except ImportError:  # click < 8.2 prints the help and exits 0 by itself: nothing raises this

        class NoArgsIsHelpError(ClickException):  # type: ignore[no-redef]
            pass

app = typer.Typer(
    name="celeryctl",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain click help: typer.rich_utils alone costs ~50 ms of start-up
    # --install-completion / --show-completion: typer.main imports typer.completion anyway, so
    # this costs --help nothing measurable (README: 'Shell completion').
    add_completion=True,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        render.out.print(f"celeryctl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    config: options.ConfigOpt = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Set up RabbitMQ and run Celery workers and tasks, with checks at every step.

    Settings come from flags, then CELERYCTL_* variables, then celeryctl.toml.
    Exit codes (README has the table): 0 ok, 1 failed, 2 usage, 3 config, 4 not installed, 5 permission, 6 unreachable, 7 access refused, 8 timeout, 9 node, 10 app, 11 not confirmed, 70 bug, 130 interrupted.
    """
    # --config is read back from click's context by options.config_path()


# Registration: each command lives in its own module under celeryctl/cli/ (none of them imports
# celery, kombu or pika at module level). The order is the order of a user's first day.
from celeryctl.cli import broker  # noqa: E402
from celeryctl.cli import convert_queue as convert_queue_cmd  # noqa: E402
from celeryctl.cli import dead as dead_cmd  # noqa: E402
from celeryctl.cli import demo as demo_cmd  # noqa: E402
from celeryctl.cli import deploy as deploy_cmd  # noqa: E402
from celeryctl.cli import doctor as doctor_cmd  # noqa: E402
from celeryctl.cli import flower as flower_cmd  # noqa: E402
from celeryctl.cli import probe as probe_cmd  # noqa: E402
from celeryctl.cli import queues as queues_cmd  # noqa: E402
from celeryctl.cli import setup_broker as setup_broker_cmd  # noqa: E402
from celeryctl.cli import status as status_cmd  # noqa: E402
from celeryctl.cli import submit as submit_cmd  # noqa: E402
from celeryctl.cli import top as top_cmd  # noqa: E402
from celeryctl.cli import worker as worker_cmd  # noqa: E402

app.command("demo")(demo_cmd.demo)
app.command("setup-broker")(setup_broker_cmd.setup_broker)
app.command("worker", cls=options.PlainHelpCommand, context_settings={"allow_interspersed_args": True})(
    worker_cmd.worker
)
app.command("submit", cls=options.PlainHelpCommand)(submit_cmd.submit)
app.command("doctor")(doctor_cmd.doctor)
app.command("status")(status_cmd.status)
app.command("top")(top_cmd.top)
app.command("queues")(queues_cmd.queues)
app.command("purge", cls=options.PlainHelpCommand)(queues_cmd.purge)
app.command("flower")(flower_cmd.flower)
app.command("convert-queue", cls=options.PlainHelpCommand)(convert_queue_cmd.convert_queue)
app.add_typer(broker.app, name="broker")
app.add_typer(dead_cmd.app, name="dead")
app.add_typer(probe_cmd.app, name="probe")
app.add_typer(deploy_cmd.app, name="deploy")


def _wants_json(argv: list[str]) -> bool:
    args = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in args


def _debug() -> bool:
    return os.environ.get("CELERYCTL_DEBUG", "") not in ("", "0")


def _report(exc: CeleryctlError, as_json: bool) -> None:
    if as_json:
        render.emit_json(render.error_doc(exc.to_dict()))
    elif isinstance(exc, InterruptedError_):
        render.err.print(f"interrupted: {exc.message}", markup=False)
        for line in exc.stdout:
            render.out.print(line, markup=False)
    else:
        tail = exc.details.get("log_tail") if isinstance(exc.details, dict) else None
        render.print_error(exc.message, exc.hint, [str(x) for x in tail] if isinstance(tail, list) else None)


def _watch_ctrl_c() -> threading.Event:
    """Note every SIGINT (still raised as KeyboardInterrupt), so main() can tell typer's silent 130 apart."""
    seen = threading.Event()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when SIGINT is ignored

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            seen.set()
            signal.default_int_handler(signum, frame)

        signal.signal(signal.SIGINT, on_sigint)
    return seen


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and map every outcome to one exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(args)
    ctrl_c = _watch_ctrl_c()
    try:
        rv = app(args=args, prog_name="celeryctl", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
        if code == ExitCode.INTERRUPTED and ctrl_c.is_set():
            # typer turns a Ctrl-C that no command caught into a plain 130, with nothing said.
            _report(InterruptedError_("stopped by Ctrl-C", None), as_json)
    except CeleryctlError as exc:
        _report(exc, as_json)
        if _debug():
            import traceback

            traceback.print_exc()
        code = int(exc.exit_code)
    except NoArgsIsHelpError as exc:
        # `celeryctl` (or a group such as `celeryctl broker`) alone asks for help: give it, on stdout.
        render.out.print(exc.format_message(), markup=False)
        code = int(ExitCode.OK)
    except ClickException as exc:
        # click's usage errors read like every other error: one line and a hint (no box, and no
        # typer.rich_utils import, which costs ~60 ms before the line appears).
        ctx = getattr(exc, "ctx", None)
        hint = f"see {ctx.command_path if ctx is not None else 'celeryctl'} --help"
        if as_json:
            render.emit_json(
                render.error_doc({"code": "usage", "message": exc.format_message(), "hint": hint, "exit_code": exc.exit_code})
            )
        else:
            render.print_error(exc.format_message(), hint)
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        _report(InterruptedError_("stopped by Ctrl-C", None), as_json)
        code = int(ExitCode.INTERRUPTED)
    except typer.Exit as exc:
        code = exc.exit_code
    except BrokenPipeError:
        code = int(ExitCode.FAILED)
    except Exception as exc:  # noqa: BLE001 - the boundary for bugs
        message = f"unexpected error: {type(exc).__name__}: {exc}"
        if as_json:
            render.emit_json(
                render.error_doc(
                    {"code": "internal", "message": message, "hint": "re-run with CELERYCTL_DEBUG=1", "exit_code": 70}
                )
            )
        else:
            render.print_error(
                message, "this is a bug in celeryctl; re-run with CELERYCTL_DEBUG=1 to see the traceback"
            )
        if _debug():
            import traceback

            traceback.print_exc()
        code = int(ExitCode.INTERNAL)
    sys.exit(code)
