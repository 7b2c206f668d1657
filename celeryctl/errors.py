"""One error family for celeryctl.

Every expected failure is a :class:`CeleryctlError` carrying a one-line message, a hint
(what to do about it), a stable machine-readable ``code`` and the process exit code.  The CLI
turns them into output at a single boundary (``celeryctl.cli.main``); the core never prints.
The exit codes are documented in README.md ("Exit codes"); keep the two in step.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # the job ran and reported a failure (task failed, a check failed)
    USAGE = 2  # bad flags or arguments (also click's own usage errors)
    CONFIG = 3  # settings file or value invalid
    NOT_INSTALLED = 4  # a program or optional package celeryctl needs is missing
    PERMISSION = 5  # not allowed (not root, Erlang cookie mismatch)
    UNREACHABLE = 6  # broker or node not reachable
    ACCESS_REFUSED = 7  # authentication, vhost or permission refused by the broker
    TIMEOUT = 8  # waited the allowed time without an answer
    NODE = 9  # the private RabbitMQ node failed to start/stop, or a port is taken
    APP = 10  # the Celery app or a task cannot be loaded/found
    NOT_CONFIRMED = 11  # a destructive action was not confirmed (--yes)
    INTERNAL = 70  # a bug in celeryctl (EX_SOFTWARE)
    INTERRUPTED = 130  # Ctrl-C


class CeleryctlError(Exception):
    """An expected failure: one line of message, one line of hint."""

    exit_code: ExitCode = ExitCode.FAILED
    code: str = "failed"

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        code: str | None = None,
        exit_code: ExitCode | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code
        if exit_code is not None:
            self.exit_code = exit_code
        self.details = details or {}

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "exit_code": int(self.exit_code),
        }
        if self.details:
            doc["details"] = self.details
        return doc


class UsageError(CeleryctlError):
    exit_code = ExitCode.USAGE
    code = "usage"


class ConfigError(CeleryctlError):
    exit_code = ExitCode.CONFIG
    code = "config"


class NotInstalledError(CeleryctlError):
    exit_code = ExitCode.NOT_INSTALLED
    code = "not_installed"


class PermissionDeniedError(CeleryctlError):
    exit_code = ExitCode.PERMISSION
    code = "permission_denied"


class UnreachableError(CeleryctlError):
    exit_code = ExitCode.UNREACHABLE
    code = "unreachable"


class AccessRefusedError(CeleryctlError):
    exit_code = ExitCode.ACCESS_REFUSED
    code = "access_refused"


class TimeoutError_(CeleryctlError):
    exit_code = ExitCode.TIMEOUT
    code = "timeout"


class NodeError(CeleryctlError):
    exit_code = ExitCode.NODE
    code = "node"


class AppError(CeleryctlError):
    exit_code = ExitCode.APP
    code = "app"


class PortInUseError(CeleryctlError):
    """A TCP port celeryctl is asked to listen on is taken by another program."""

    exit_code = ExitCode.NODE
    code = "port_in_use"


class InterruptedError_(CeleryctlError):
    """Ctrl-C (SIGINT): the command stopped; ``details`` say what was already done.

    ``stdout`` holds the data the command still owes its reader without ``--json`` (the id of
    the task it stopped waiting for); under ``--json`` the same is in ``details``.
    """

    exit_code = ExitCode.INTERRUPTED
    code = "interrupted"

    def __init__(
        self, message: str, hint: str | None = None, *, stdout: list[str] | None = None, **kwargs: object
    ) -> None:
        super().__init__(message, hint, **kwargs)  # type: ignore[arg-type]
        self.stdout = stdout or []


class NotConfirmedError(CeleryctlError):
    exit_code = ExitCode.NOT_CONFIRMED
    code = "not_confirmed"


class QueueNotFoundError(CeleryctlError):
    """A queue named on the command line does not exist on the vhost."""

    exit_code = ExitCode.FAILED
    code = "queue_not_found"


class QueueMismatchError(CeleryctlError):
    """A queue or exchange exists with other arguments than celeryctl declares (RabbitMQ refuses)."""

    exit_code = ExitCode.CONFIG
    code = "queue_mismatch"


class TaskFailedError(CeleryctlError):
    """The task ran and failed (exit 1)."""

    exit_code = ExitCode.FAILED
    code = "task_failed"


class WorkerError(CeleryctlError):
    """A worker celeryctl started did not come up, or died."""

    exit_code = ExitCode.FAILED
    code = "worker_failed"


class InternalError(CeleryctlError):
    """A state celeryctl's own code should never reach: a bug (exit 70), with what is known."""

    exit_code = ExitCode.INTERNAL
    code = "internal"


class CommandError(CeleryctlError):
    """An external program (rabbitmqctl, apt-get) failed; stderr is already redacted."""

    exit_code = ExitCode.FAILED
    code = "command_failed"

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        argv: list[str] | None = None,
        returncode: int | None = None,
        stderr: str = "",
        **kwargs: object,
    ) -> None:
        super().__init__(message, hint, **kwargs)  # type: ignore[arg-type]
        self.argv = argv or []
        self.returncode = returncode
        self.stderr = stderr
        self.details.update({"argv": self.argv, "returncode": returncode})


class QueueBusyError(CeleryctlError):
    """A queue that must not be consumed for the action (convert-queue) has consumers."""

    exit_code = ExitCode.FAILED
    code = "queue_in_use"


class ApiError(CeleryctlError):
    """The management HTTP API answered with an error celeryctl has no better class for (exit 1);
    ``details`` hold the method, path and HTTP status."""

    exit_code = ExitCode.FAILED
    code = "api_error"
