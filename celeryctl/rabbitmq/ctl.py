"""The one place that runs external programs: RabbitMQ's own (rabbitmqctl, rabbitmq-server, ...) and apt-get.

:func:`run_program` resolves the program first, always captures both streams (or sends both to a
log file), passes secrets on stdin, redacts them from what it captured, and turns the ways a
program can fail to run into :class:`~celeryctl.errors.CeleryctlError` subclasses: not found
(exit 4), not allowed (exit 5), too slow (exit 8).  :class:`Runner` aims it at one node and
turns a failed rabbitmqctl call into the error a user can act on (:func:`classify_failure`),
carrying the command, its return code and its stderr with every secret redacted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celeryctl.errors import (
    CommandError,
    NotInstalledError,
    PermissionDeniedError,
    TimeoutError_,
    UnreachableError,
    UsageError,
)

BIN_DIR_ENV = "CELERYCTL_RABBITMQ_BIN_DIR"
# Where distributions put the real scripts (Debian's /usr/sbin ones are wrappers that switch
# to the rabbitmq user when run as root, which a private node must not do).
WELL_KNOWN_BIN_DIRS = ("/usr/lib/rabbitmq/bin", "/usr/local/sbin", "/usr/sbin", "/opt/homebrew/sbin")
# Homebrew's default prefixes: Apple Silicon, Intel Macs, Linux.  Neither PREFIX/sbin nor the
# keg's $(brew --prefix rabbitmq)/sbin is on macOS's default PATH.
HOMEBREW_PREFIXES = ("/opt/homebrew", "/usr/local", "/home/linuxbrew/.linuxbrew")
INSTALL_HINT = "install RabbitMQ with: celeryctl broker install"
# Each rabbitmqctl call boots an Erlang node of its own that listens for distribution (on
# 35672-35682 by default, every interface): for a node on this machine, loopback is enough.
CTL_ERL_ARGS_ENV = "RABBITMQ_CTL_ERL_ARGS"
LOOPBACK_CTL_ERL_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"
RESOLVE_TIMEOUT = 3.0  # seconds for a remote node's host name to resolve (a dead DNS server takes 50 s)
REMOTE_EPMD_TIMEOUT = 2.0

_NODE_HEAD = re.compile(r"[A-Za-z0-9_-]+")
_NODE_HOST = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
MAX_NODE_NAME = 255  # an Erlang atom


def check_node_name(name: str, what: str = "the node name") -> str:
    """A RabbitMQ node name, ``NAME@HOST``, as Erlang and rabbitmqctl accept it; else UsageError.

    NAME is letters, digits, ``_`` and ``-``; HOST a host name or IPv4 address.  Checked before
    any call, so a typo is one clear line instead of rabbitmqctl's output (or a long wait).
    """
    hint = "write it as NAME@HOST, e.g. rabbit@localhost (NAME: letters, digits, _ and -)"
    head, at, host = name.partition("@")
    if not at:
        raise UsageError(f"{what} {name!r} is not NAME@HOST", hint)
    if not _NODE_HEAD.fullmatch(head):
        raise UsageError(f"{what} {name!r} has an invalid name part {head!r}", hint)
    if not _NODE_HOST.fullmatch(host):
        raise UsageError(f"{what} {name!r} has an invalid host part {host!r}", hint)
    if len(name) > MAX_NODE_NAME:
        raise UsageError(f"{what} is {len(name)} characters long, the limit is {MAX_NODE_NAME}", hint)
    return name


def find_bin_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """The directory of the real ``rabbitmq-server``/``rabbitmqctl`` scripts, or None.

    ``CELERYCTL_RABBITMQ_BIN_DIR`` pins it (and only it is searched); otherwise PATH, then
    Homebrew's (:func:`homebrew_bin_dirs`), then the places distributions use.  A Debian wrapper
    found on PATH maps to /usr/lib/rabbitmq/bin.
    """
    env = os.environ if env is None else env
    pinned = env.get(BIN_DIR_ENV)
    if pinned:
        d = Path(pinned)
        return d if (d / "rabbitmq-server").exists() and (d / "rabbitmqctl").exists() else None
    found = shutil.which("rabbitmq-server", path=env.get("PATH", os.defpath))
    candidates: list[Path] = []
    if found:
        real = Path(found).resolve().parent
        candidates.append(real)
    candidates.extend(homebrew_bin_dirs(env))
    candidates.extend(Path(d) for d in WELL_KNOWN_BIN_DIRS)
    for d in candidates:
        server, ctl = d / "rabbitmq-server", d / "rabbitmqctl"
        if not (server.exists() and ctl.exists()):
            continue
        if _is_debian_wrapper(ctl) and Path("/usr/lib/rabbitmq/bin/rabbitmqctl").exists():
            return Path("/usr/lib/rabbitmq/bin")
        return d
    return None


def homebrew_bin_dirs(env: Mapping[str, str] | None = None) -> list[Path]:
    """Homebrew's PREFIX/sbin (links) and PREFIX/opt/rabbitmq/sbin (the keg), most likely PREFIX first.

    PREFIX: ``$HOMEBREW_PREFIX`` (set by ``brew shellenv``), that of the ``brew`` on PATH
    (PREFIX/bin/brew: no slow ``brew --prefix`` call), then :data:`HOMEBREW_PREFIXES`.
    """
    env = os.environ if env is None else env
    prefixes = [env["HOMEBREW_PREFIX"]] if env.get("HOMEBREW_PREFIX") else []
    brew = shutil.which("brew", path=env.get("PATH", os.defpath))
    if brew:
        prefixes.append(str(Path(brew).parent.parent))  # not resolved: Intel's bin/brew links elsewhere
    prefixes.extend(HOMEBREW_PREFIXES)
    return [Path(p) / sub for p in dict.fromkeys(prefixes) for sub in ("sbin", "opt/rabbitmq/sbin")]


def _is_debian_wrapper(path: Path) -> bool:
    try:
        return b"rabbitmq-script-wrapper" in path.read_bytes()[:4096]
    except OSError:
        return False


def require_bin_dir(env: Mapping[str, str] | None = None) -> Path:
    d = find_bin_dir(env)
    if d is None:
        raise NotInstalledError("RabbitMQ is not installed (rabbitmq-server not found)", INSTALL_HINT)
    return d


def installed_version(bin_dir: Path) -> str | None:
    """The RabbitMQ version of an installation, read from its files (no Erlang VM).

    The scripts' links lead to the real tree: a package's ``lib/rabbitmq_server-VERSION``, or
    the generic build's (and a Homebrew keg's, ``Cellar/rabbitmq/VERSION``) ``plugins/rabbit-VERSION``.
    """
    home = (bin_dir / "rabbitmqctl").resolve().parent.parent
    if home.name.startswith("rabbitmq_server-"):
        return home.name.split("-", 1)[1]
    server_lib = "rabbitmq_server-"
    for lib, head in (
        (home / "plugins", "rabbit-"),
        (bin_dir.parent / "lib", server_lib),
        (bin_dir.parent / "lib" / "rabbitmq" / "lib", server_lib),
        (Path("/usr/lib/rabbitmq/lib"), server_lib),
    ):
        try:
            names = sorted(entry.name for entry in lib.iterdir())
        except OSError:
            continue
        for name in names:
            version = name[len(head) :].removesuffix(".ez") if name.startswith(head) else ""
            if version[:1].isdigit():
                return version
    return None


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "****")
    return text


@dataclass
class CtlResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def json(self) -> Any:
        text = self.stdout.strip()
        if not text:
            return []
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            # Some 3.x commands print one JSON document per line.
            return [json.loads(line) for line in text.splitlines() if line.strip()]


def resolve_program(name: str, env: Mapping[str, str] | None = None, hint: str = INSTALL_HINT) -> str:
    """The path of a program: ``name`` itself when it has a directory part, else found on PATH."""
    env = os.environ if env is None else env
    if os.sep in name:
        if not Path(name).exists():
            raise NotInstalledError(f"{name} not found", hint)
        return name
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if found is None:
        raise NotInstalledError(f"{name} not found on PATH", hint)
    return found


def _seconds(timeout: float) -> str:
    return f"{timeout:.0f}" if timeout >= 1 else f"{timeout:.1f}"


def run_program(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    secrets: Sequence[str] = (),
    output: Path | None = None,
    label: str | None = None,
    timeout_hint: str | None = None,
    install_hint: str = INSTALL_HINT,
) -> CtlResult:
    """Run one external program to its end and return what it did; never raises for a non-zero status.

    ``env`` is merged over ``os.environ``.  ``stdin`` None: the program reads /dev/null.  Both
    streams are captured, or with ``output`` written together to that file (for a program that
    leaves a daemon behind holding them, like ``rabbitmq-server -detached``) and read back.
    Every one of ``secrets`` is replaced by ``****`` in what is returned.  Not found: exit 4;
    not executable: exit 5; still running after ``timeout`` seconds (it is killed): exit 8,
    the message naming ``label`` (default: the program and its first argument).
    """
    full_env = {**os.environ, **(env or {})}
    argv = [resolve_program(argv[0], full_env, install_hint), *argv[1:]]
    label = label or " ".join([Path(argv[0]).name, *argv[1:2]])
    started = time.monotonic()
    try:
        if output is None:
            proc = _run(argv, full_env, stdin, timeout, subprocess.PIPE, subprocess.PIPE)
            out, err = proc.stdout, proc.stderr
        else:
            from celeryctl.files import open_log

            with open_log(output) as log:
                proc = _run(argv, full_env, stdin, timeout, log, subprocess.STDOUT)
            out, err = output.read_text(encoding="utf-8", errors="replace"), ""
    except subprocess.TimeoutExpired:
        raise TimeoutError_(f"{label} did not answer within {_seconds(timeout)} s", timeout_hint) from None
    except PermissionError:
        raise PermissionDeniedError(f"not allowed to run {argv[0]}", "check the file permissions") from None
    except FileNotFoundError:  # removed since resolve_program, or its #! interpreter is missing
        raise NotInstalledError(f"{argv[0]} not found (or the interpreter it names)", install_hint) from None
    except OSError as exc:  # e.g. ENOEXEC: not a program this system can run
        raise CommandError(
            f"cannot run {argv[0]}: {exc.strerror or exc}", "check the file: is it a program for this system?"
        ) from None
    secrets = [s for s in secrets if s]
    return CtlResult(
        argv=argv,
        returncode=proc.returncode,
        stdout=redact(out or "", secrets),
        stderr=redact(err or "", secrets),
        seconds=time.monotonic() - started,
    )


def _run(
    argv: list[str], env: dict[str, str], stdin: str | None, timeout: float, stdout: Any, stderr: Any
) -> subprocess.CompletedProcess[str]:
    # The only subprocess call of celeryctl's short-lived programs (the demo's worker is a Popen in worker.py).
    if stdin is None:
        return subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, text=True, env=env, timeout=timeout
        )
    return subprocess.run(argv, input=stdin, stdout=stdout, stderr=stderr, text=True, env=env, timeout=timeout)


@dataclass
class Runner:
    """Runs a RabbitMQ CLI tool against one node.

    ``node`` is passed as ``-n``; ``env`` is merged over ``os.environ`` (a private node needs
    its HOME for the Erlang cookie and its epmd port).  ``calls`` records every argv run, for
    tests and for ``--json`` reports of what was done.
    """

    bin_dir: Path | None = None
    node: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 60.0
    calls: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.node is not None:
            check_node_name(self.node, "--node")

    def executable(self, tool: str) -> str:
        bin_dir = self.bin_dir or require_bin_dir({**os.environ, **self.env})
        path = bin_dir / tool
        if not path.exists():
            raise NotInstalledError(f"{tool} not found in {bin_dir}", INSTALL_HINT)
        return str(path)

    def argv(self, tool: str, args: Sequence[str]) -> list[str]:
        argv = [self.executable(tool)]
        if self.node and tool in NODE_TOOLS:
            argv += ["-n", self.node]
            if "." in self.node.partition("@")[2]:  # a fully qualified host: Erlang's long names
                argv.append("--longnames")
        return argv + list(args)

    def _env(self) -> dict[str, str]:
        """The environment of a call: ``env``, and for a node on this machine a loopback-only CLI node."""
        if not _is_local(self.node):
            return self.env
        own = self.env.get(CTL_ERL_ARGS_ENV, os.environ.get(CTL_ERL_ARGS_ENV, ""))
        return {**self.env, CTL_ERL_ARGS_ENV: f"{LOOPBACK_CTL_ERL_ARGS} {own}".strip()}

    def run(
        self,
        *args: str,
        tool: str = "rabbitmqctl",
        stdin: str | None = None,
        secrets: Sequence[str] = (),
        check: bool = True,
        timeout: float | None = None,
    ) -> CtlResult:
        argv = self.argv(tool, args)
        if tool in NODE_TOOLS and args and args[0] not in ("help", "version"):
            self._require_epmd()
        self.calls.append(list(argv))
        result = run_program(
            argv,
            env=self._env(),
            stdin=stdin if stdin is not None else "",
            secrets=secrets,
            timeout=timeout or self.timeout,
            label=f"{Path(argv[0]).name} {' '.join(args[:1])}",
            timeout_hint="is the node overloaded or stuck? check its log",
        )
        if check and result.returncode != 0:
            raise classify_failure(result, self.node)
        return result

    def _require_epmd(self) -> None:
        """A local node always registers with epmd: with no epmd, the node is not running.

        Saying so here costs no Erlang VM (0.4 s) and, unlike running the tool, does not leave
        an epmd daemon behind that the tool would have started.
        """
        port_text = {**os.environ, **self.env}.get("ERL_EPMD_PORT") or "4369"
        try:
            port = int(port_text)
        except ValueError:
            return
        if not _is_local(self.node):
            assert self.node is not None  # None is the local system node
            self._require_remote_epmd(self.node, port)
            return
        if not _epmd_answers(port):
            raise UnreachableError(
                f"RabbitMQ node {self.node} is not running" if self.node else "the system RabbitMQ node is not running",
                "start one with: celeryctl broker start (or start the system service)",
                details={"epmd_port": port},
            )

    @staticmethod
    def _require_remote_epmd(node: str, port: int) -> None:
        """A remote node's host must resolve and its epmd answer, in seconds (rabbitmqctl waits ~50 s)."""
        host = node.partition("@")[2]
        hint = "check the node name (NAME@HOST) and that RabbitMQ runs there; rabbitmqctl needs its epmd (port 4369)"
        try:
            address = _resolve(host, RESOLVE_TIMEOUT)
        except OSError as exc:
            raise UnreachableError(
                f"RabbitMQ node {node} is not reachable: host {host} does not resolve ({exc.strerror or exc})",
                hint,
                details={"node": node, "host": host},
            ) from None
        if address is None:
            raise UnreachableError(
                f"RabbitMQ node {node} is not reachable: host {host} did not resolve within {RESOLVE_TIMEOUT:g} s",
                hint,
                details={"node": node, "host": host},
            )
        if not _epmd_answers(port, address, REMOTE_EPMD_TIMEOUT):
            raise UnreachableError(
                f"RabbitMQ node {node} is not reachable: nothing answers on {host}:{port} (epmd)",
                hint,
                details={"node": node, "host": host, "epmd_port": port},
            )

    def json(self, *args: str, tool: str = "rabbitmqctl", **kwargs: Any) -> Any:
        return self.run(*args, "--formatter", "json", tool=tool, **kwargs).json()

    def run_parallel(self, calls: Sequence[Sequence[str]], tool: str = "rabbitmqctl") -> list[Any]:
        """Run read-only ``--formatter json`` calls at the same time (each boots an Erlang VM)."""
        with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
            futures = [pool.submit(self.json, *c, tool=tool) for c in calls]
            return [f.result() for f in futures]


NODE_TOOLS = ("rabbitmqctl", "rabbitmq-diagnostics", "rabbitmq-plugins", "rabbitmq-queues")


def _is_local(node: str | None) -> bool:
    """Does the Erlang node ``name@host`` run on this machine?"""
    from celeryctl.broker import is_this_machine

    return node is None or is_this_machine(node.rpartition("@")[2])


def _epmd_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _resolve(host: str, timeout: float) -> str | None:
    """An address of ``host``; None when the resolver did not answer within ``timeout`` seconds.

    getaddrinfo cannot be interrupted: it runs in a daemon thread, left behind when it hangs.
    """
    import socket
    import threading

    answer: list[str] = []
    failure: list[OSError] = []

    def lookup() -> None:
        try:
            answer.append(str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0]))
        except OSError as exc:
            failure.append(exc)

    thread = threading.Thread(target=lookup, name=f"resolve {host}", daemon=True)
    thread.start()
    thread.join(timeout)
    if failure:
        raise failure[0]
    return answer[0] if answer else None


def _first_line(text: str) -> str:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("Error:"):
            return line
    return text.strip().splitlines()[0] if text.strip() else ""


def classify_failure(result: CtlResult, node: str | None) -> Exception:
    """Turn a failed call into the error a user can act on."""
    tool = Path(result.argv[0]).name
    text = f"{result.stderr}\n{result.stdout}"
    low = text.lower()
    target = node or "the local node"
    common = {"argv": result.argv, "returncode": result.returncode, "stderr": result.stderr}
    # Every 3.x "unable to perform an operation" message lists "Erlang cookie not matching" among
    # the common reasons, so only the DIAGNOSTICS lines tell a cookie mismatch from a stopped node.
    if (
        "invalid_cookie" in low
        or ("cookie" in low and "authentication failed" in low)
        or "tcp connection succeeded but erlang distribution failed" in low
        or "check if the erlang cookie is identical" in low
    ):
        not_root = node is None and hasattr(os, "geteuid") and os.geteuid() != 0
        return PermissionDeniedError(
            f"{tool} was refused by {target}: the Erlang cookie does not match"
            + (
                " (you are not root: the system node's cookie is readable by root and rabbitmq only)"
                if not_root
                else ""
            ),
            "run as the user that owns the node (sudo for the system node), or use the node's HOME",
            details=common,
        )
    if "eacces" in low or "permission denied" in low:
        return PermissionDeniedError(
            f"{tool} is not allowed to talk to {target} (permission denied)",
            "run it as root (sudo) or as the user that runs the node",
            details=common,
        )
    if (
        "unable to perform an operation on node" in low
        or "nodedown" in low
        or "unable to connect to node" in low
        or "target node is not running" in low
    ):
        return UnreachableError(
            f"RabbitMQ node {node} is not running" if node else "the system RabbitMQ node is not running",
            "start one with: celeryctl broker start (or start the system service)",
            details=common,
        )
    message = _first_line(result.stderr) or _first_line(result.stdout) or f"exit status {result.returncode}"
    return CommandError(
        f"{tool} {' '.join(result.argv[1:3])} failed: {message}",
        "run with CELERYCTL_DEBUG=1 for the full output",
        argv=result.argv,
        returncode=result.returncode,
        stderr=result.stderr,
    )
