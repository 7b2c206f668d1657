"""Property: whatever a user types, celeryctl ends with a documented exit code and one clear error.

Every command is driven with generated input (task arguments and kwargs, task and queue names,
permission regexes, broker URLs, numbers including nan/inf/negative/huge, settings files and
CELERYCTL_* variables).  For every run:

* the exit code is in the README's table and is not 70 (a bug);
* no traceback is printed;
* it ends within a deadline (no hang);
* a failure prints exactly one ``error:`` line on stderr (click's usage errors: one message in
  its box), or under ``--json`` exactly one JSON document on stdout with ``ok: false`` and
  ``error.exit_code`` equal to the exit code;
* setup-broker runs that fail validation leave the node's users, vhosts, permissions and queues
  as they were.

Runs that need a broker use the session node (``rabbit``) on a throwaway vhost; blocking commands
get bounded variants (a closed local port as broker, small waits, a fake rabbitmq-server).
Most commands run in-process (``celeryctl.cli.main`` with a SIGALRM deadline); worker, flower,
top, broker start, demo and setup-broker run as subprocesses.

Each family runs all its examples and collects the violations, then fails once listing every
distinct one (command, kind, first line of output) with the smallest argv and environment that
showed it.  Hypothesis is derandomized (same examples every run), without a database or deadline.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RabbitNode, Vhost, VhostFactory, fake_bin

EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 130}  # README "Exit codes", 70 left out on purpose
INPROCESS_DEADLINE = 8.0
SUBPROCESS_DEADLINE = 20.0

SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------- running celeryctl


@dataclass
class Outcome:
    argv: list[str]
    env: dict[str, str]
    code: int | None  # None: it did not end within the deadline
    stdout: str
    stderr: str
    seconds: float
    settings_file: str | None = None

    def describe(self) -> str:
        env = " ".join(f"{k}={v!r}" for k, v in sorted(self.env.items()))
        lines = [f"celeryctl {' '.join(_quote(a) for a in self.argv)}"]
        if env:
            lines.append(f"  env: {env}")
        if self.settings_file is not None:
            lines.append(f"  ./celeryctl.toml: {self.settings_file!r}")
        lines.append(f"  exit {self.code} after {self.seconds:.1f} s")
        for name, text in (("stdout", self.stdout), ("stderr", self.stderr)):
            head = text.strip().splitlines()[:4]
            if head:
                lines.append(f"  {name}: " + "\n          ".join(line[:200] for line in head))
        return "\n".join(lines)


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else repr(arg)


class _Deadline(BaseException):
    """Raised by SIGALRM in the middle of an in-process run that took too long."""


def run_inprocess(argv: list[str], env: dict[str, str], cwd: Path, deadline: float = INPROCESS_DEADLINE) -> Outcome:
    """``celeryctl.cli.main(argv)`` in this process: stdout/stderr captured, os.environ and cwd replaced."""
    from celeryctl.cli import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    code: int | None = None

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Deadline()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    pika_log = logging.getLogger("pika")
    pika_level = pika_log.level
    pika_log.setLevel(logging.CRITICAL)  # in the report only: pytest's log capture would keep every record
    start = time.monotonic()
    try:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        signal.setitimer(signal.ITIMER_REAL, deadline)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(argv))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except _Deadline:
        code = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        _drop_result_consumers()
        pika_log.setLevel(pika_level)
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
    seconds = time.monotonic() - start
    if seconds > deadline:  # the alarm was swallowed somewhere: still a hang
        code = None
    return Outcome(argv, _visible_env(env), code, out.getvalue(), err.getvalue(), seconds)


def _drop_result_consumers() -> None:
    """Close what the end of a real ``celeryctl`` process would: each app's rpc:// result consumer.

    A ``submit --wait`` leaves its result consumer connected (the process's exit closes it); in
    this process it would stay, consuming the app's reply queue, and take the reply of a later
    run's doctor round trip (a backend FAIL after the whole --timeout, on every doctor run).
    """
    from celery import _state

    for app in list(_state._get_active_apps()):
        backend = getattr(app._local, "backend", None)
        consumer = getattr(backend, "result_consumer", None)
        if getattr(consumer, "_connection", None) is not None:
            with contextlib.suppress(Exception):  # already closed by the broker: nothing left to close
                consumer.stop()
        if backend is not None:
            del app._local.backend  # the next run builds its own, as a new process would


def run_subprocess(
    argv: list[str], env: dict[str, str], cwd: Path, deadline: float = SUBPROCESS_DEADLINE, stdin: str = ""
) -> Outcome:
    """The real ``celeryctl`` process; killed with its whole process group after the deadline."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "celeryctl", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(stdin, timeout=deadline)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        code = None
    return Outcome(argv, _visible_env(env), code, stdout, stderr, time.monotonic() - start)


def _visible_env(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("CELERYCTL_") and k != "CELERYCTL_DATA_DIR"}


# --------------------------------------------------------------------------- the property


_BOX_MESSAGE = re.compile(r"^│ (.*?)\s*│$")


def error_lines(stderr: str) -> list[str]:
    """The lines of stderr that state an error: ``error: ...`` lines, or click's boxed message."""
    lines = [line.rstrip() for line in stderr.splitlines()]
    found = [line for line in lines if line.lower().startswith("error:")]
    if any(line.startswith("╭─ Error") for line in lines):
        found += [m.group(1) for line in lines if (m := _BOX_MESSAGE.match(line))]
    return found


def violations(outcome: Outcome, *, report_on_failure: bool = False) -> list[tuple[str, str]]:
    """What this run did that the README says it must not: ``[(kind, detail)]``.

    ``report_on_failure``: exit 1 may be a report (doctor's table of checks) rather than an error.
    """
    found: list[tuple[str, str]] = []
    code = outcome.code
    if code is None:
        return [("hang", f"still running after {outcome.seconds:.0f} s")]
    if code == 70:
        found.append(("exit 70", _first_error(outcome)))
    elif code not in EXIT_CODES:
        found.append(("undocumented exit code", f"exit {code}: {_first_error(outcome)}"))
    for name, text in (("stdout", outcome.stdout), ("stderr", outcome.stderr)):
        if "Traceback (most recent call last)" in text:
            found.append(("traceback", f"on {name}: {_traceback_tail(text)}"))
    found += _output_violations(outcome, code, report_on_failure)
    if code not in (0, None):
        noise = [line for line in outcome.stderr.splitlines() if _LOG_RECORD.search(line)]
        if noise:
            found.append(("log records or warnings on stderr", noise[0][:160]))
    return found


def _output_violations(outcome: Outcome, code: int, report_on_failure: bool) -> list[tuple[str, str]]:
    """One JSON document under --json (an error document on failure), else one error line on failure."""
    found: list[tuple[str, str]] = []
    args = outcome.argv[: outcome.argv.index("--")] if "--" in outcome.argv else outcome.argv
    if "--json" in args and "--help" not in args:
        try:
            doc = json.loads(outcome.stdout)
        except json.JSONDecodeError as exc:
            found.append(("not one JSON document", f"{exc.msg}: {outcome.stdout.strip()[:120]!r}"))
        else:
            if code != 0 and not (report_on_failure and code == 1):
                error = doc.get("error") if isinstance(doc, dict) else None
                if not isinstance(doc, dict) or doc.get("ok") is not False or not isinstance(error, dict):
                    found.append(("JSON error without ok:false/error", outcome.stdout.strip()[:160]))
                elif error.get("exit_code") != code:
                    found.append(
                        ("JSON exit_code differs", f"error.exit_code {error.get('exit_code')} but exit {code}")
                    )
    elif code not in (0, None) and not (report_on_failure and code == 1 and outcome.stdout.strip()):
        lines = error_lines(outcome.stderr)
        if len(lines) != 1:
            detail = f"{len(lines)} error lines: {outcome.stderr.strip()[:200]!r}"
            found.append(("not one error line", detail))
    return found


# A library's log record or a Python warning reaching the user instead of celeryctl's one line.
_LOG_RECORD = re.compile(r"^(ERROR|CRITICAL|WARNING|INFO|DEBUG)[: ]|^\[\d{4}-\d\d-\d\d|\w+Warning: ")


def _first_error(outcome: Outcome) -> str:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        return str(json.loads(outcome.stdout)["error"]["message"])[:200]
    lines = error_lines(outcome.stderr) or (outcome.stderr.strip() or outcome.stdout.strip()).splitlines()[:1]
    return lines[0][:200] if lines else "(no output)"


def _traceback_tail(text: str) -> str:
    tail = text[text.index("Traceback (most recent call last)") :].strip().splitlines()
    last = [line for line in tail if line and not line.startswith(" ")]
    return last[-1][:200] if last else "?"


@dataclass
class Findings:
    """Violations collected over a family's examples; distinct ones kept with their shortest example."""

    family: str
    seen: dict[tuple[str, str, str], Outcome] = field(default_factory=dict)
    details: dict[tuple[str, str, str], str] = field(default_factory=dict)
    runs: int = 0
    codes: Counter[int | None] = field(default_factory=Counter)

    def check(self, outcome: Outcome, extra: list[tuple[str, str]] = (), **kwargs: Any) -> None:  # type: ignore[assignment]
        self.runs += 1
        self.codes[outcome.code] += 1
        for kind, detail in [*violations(outcome, **kwargs), *extra]:
            command = " ".join(a for a in outcome.argv[:2] if not a.startswith("-"))
            key = (command.split(" ")[0] if not command.startswith("broker") else command, kind, _normalise(detail))
            old = self.seen.get(key)
            if old is None or len(repr(outcome.argv)) + len(repr(outcome.env)) < len(repr(old.argv)) + len(
                repr(old.env)
            ):
                self.seen[key] = outcome
                self.details[key] = detail

    def assert_none(self) -> None:
        summary = ", ".join(
            f"exit {c}: {n}" for c, n in sorted(self.codes.items(), key=lambda i: (i[0] is None, i[0] or 0))
        )
        print(f"{self.family}: {self.runs} runs ({summary})")
        if not self.seen:
            return
        parts = [f"{len(self.seen)} distinct violation(s) in {self.runs} runs of the {self.family} family ({summary}):"]
        for (command, kind, _), outcome in sorted(self.seen.items()):
            parts.append(f"\n[{command}] {kind}: {self.details[(command, kind, _)]}\n{outcome.describe()}")
        pytest.fail("\n".join(parts), pytrace=False)


def _normalise(detail: str) -> str:
    """Group details that differ only in generated values (quoted text, numbers)."""
    detail = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", detail)
    return re.sub(r"\d+(\.\d+)?", "N", detail)[:80]


# --------------------------------------------------------------------------- strategies

# Numbers a user might type.  BAD: never valid for a duration, a count or a port.  HUGE: finite
# but far beyond any sensible value (valid for some options; never given to options that wait
# for something that will not come, where a huge value is a legitimate, endless wait).
BAD_NUMBERS = ["nan", "NaN", "inf", "-inf", "Infinity", "-1", "-0.5", "abc", "", " ", "1e309", "0x10", "1,5", "٣"]
HUGE_NUMBERS = ["1e300", str(2**64), str(10**30), "9223372036854775808", "1e18"]
SMALL_WAITS = ["0.2", "0.5", "1"]


def numbers(*, waits: bool) -> st.SearchStrategy[str]:
    """Option values for a number: bad ones, and small or huge valid ones (huge only when nothing waits)."""
    valid = SMALL_WAITS + ([] if waits else [*HUGE_NUMBERS, "0", "3", "7"])
    return st.sampled_from(BAD_NUMBERS + valid + ["0"] * (not waits))


PORT_VALUES = ["0", "-1", "65536", "70000", str(2**64), "abc", "", "1.5", "nan", "80a"]

queue_names = st.one_of(
    st.sampled_from(["celery", "", " ", "q" * 256, "é" * 128, "a\x00b", "amq.gen-x", "x\ny", "::", "[q]", "%s"]),
    st.text(min_size=1, max_size=12),
)
task_names = st.one_of(
    st.sampled_from(
        ["add", "celeryctl.demo.add", "mul", "sleep", "nosuch", "", "a.b.", "ädd", "x" * 300, "celeryctl.", ":x:"]
    ),
    st.text(min_size=1, max_size=10),
)
json_or_not = st.one_of(
    st.sampled_from(
        ["1", "2", "1.5", "true", "null", '"x"', "[1,2]", '{"a":1}', "[1", "NaN", "Infinity", "1e999", "-1", "--x", ""]
    ),
    st.text(max_size=8),
    st.integers().map(str),
)
kw_items = st.one_of(
    st.sampled_from(["a=1", "x=[1,2]", "noequals", "=1", "a=", "a=[1", "seconds=NaN", "é=1", "a b=2", "a=b=c"]),
    st.builds(lambda k, v: f"{k}={v}", st.text(max_size=5), json_or_not),
)
kwargs_json = st.one_of(
    st.sampled_from(['{"a":1}', "[1]", "{", "null", '{"a": NaN}', '"x"', "{}", '{"seconds": 1e999}', ""]),
    st.text(max_size=8),
)
regexes = st.one_of(
    st.sampled_from([".*", "", "^$", "[", "(", "a{2,1}", "\\", "*", "(?P<x", "^amq\\.", "é+", "a" * 300]),
    st.text(max_size=6),
)
eta_values = st.sampled_from(["2030-01-01T00:00:00", "2020-01-01", "tomorrow", "", "2030-13-45T99:00", "nan", "1e9"])


@dataclass
class Env:
    """What the generated runs share: the session node, a throwaway vhost, ports that refuse."""

    rabbit: RabbitNode
    vhost: Vhost
    closed_port: int
    base_env: dict[str, str]
    root: Path

    @property
    def good_url(self) -> str:
        return self.vhost.url

    @property
    def refused_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.closed_port}//"

    def workdir(self, settings_text: str | bytes | None = None) -> Path:
        path = self.root / uuid.uuid4().hex[:10]
        path.mkdir()
        if settings_text is not None:
            file = path / "celeryctl.toml"
            file.write_bytes(settings_text if isinstance(settings_text, bytes) else settings_text.encode())
            file.chmod(0o600)
        return path


def broker_urls(env: Env) -> st.SearchStrategy[str]:
    """The throwaway vhost's URL with one or two of its parts replaced by generated ones (or a refusing port)."""
    good = {
        "scheme": "amqp",
        "user": "guest",
        "password": "guest",
        "host": "127.0.0.1",
        "port": str(env.rabbit.port),
        "vhost": env.vhost.name,
        "query": "",
    }
    bad = {
        "scheme": ["pyamqp", "amqps", "redis", "http", "", "AMQP", "amqp+x"],
        "user": ["", "gu:est", "g%40x", "ü", "a/b", "%zz", "us er", "nosuch"],
        "password": ["", "p@ss", "p:w", "%", "pa/ss", "ü", "x" * 300, "wrong"],
        "host": [
            "localhost",
            "",
            "a" * 64,
            ".".join(["a" * 63] * 5),
            "exa mple",
            "bad_host!",
            "[::1]",
            "[::1",
            "256.1.1.1",
            "-leading",
            "ünïcode.invalid",
            "h\x01st",
        ],
        "port": ["", "0", "65536", "-1", "abc", "99999999999999999999", "1.5", str(env.closed_port)],
        "vhost": ["", "%2F", "nosuch", "v" * 300, "v%ZZ", "ü"],
        "query": [
            "?heartbeat=abc",
            "?heartbeat=-1",
            "?heartbeat=1e999",
            "?connect_timeout=nan",
            "?connect_timeout=-5",
            "?ssl=maybe",
            "?x",
            "?heartbeat=10",
        ],
    }

    @st.composite
    def mutated(draw: Any) -> str:
        parts = dict(good)
        for key in draw(st.lists(st.sampled_from(sorted(bad)), min_size=1, max_size=2)):
            parts[key] = draw(st.sampled_from(bad[key]))
        cred = f"{parts['user']}:{parts['password']}@" if (parts["user"] or parts["password"]) else ""
        port = f":{parts['port']}" if parts["port"] else ""
        return f"{parts['scheme']}://{cred}{parts['host']}{port}/{parts['vhost']}{parts['query']}"

    return st.one_of(mutated(), st.just(env.refused_url))


def settings_file_variants(env: Env) -> list[str | bytes]:
    """Settings files: valid, quoted keys, broken TOML, tables, wrong types, not UTF-8, empty."""
    url = env.good_url
    return [
        f'broker_url = "{url}"\n',
        f'"broker_url" = "{url}"\n',
        f"'broker_url' = '{url}'\n",
        "broker_url = amqp://x\n",
        "[[[\n",
        'broker_url = "a"\nbroker_url = "b"\n',
        '[broker]\nurl = "x"\n',
        "broker_url = {a = 1}\n",
        'doctor_timeout = "abc"\n',
        "doctor_timeout = nan\n",
        "doctor_timeout = inf\n",
        "doctor_timeout = -1\n",
        "ping_timeout = true\n",
        "ping_timeout = 1e400\n",
        "broker_url = 5\n",
        "unknown_key = 1\n",
        "data_dir = 5\n",
        'app = ["x"]\n',
        'app = "nosuch_module_xyz"\n',
        'result_backend = "nosuch://"\n',
        f'broker_url = "amqp://guest:guest@{"a" * 64}:5672//"\n',
        b"\xff\xfebroker_url = 1\n",
        "",
    ]


def cli_env(env: Env) -> st.SearchStrategy[dict[str, str]]:
    values = {
        "CELERYCTL_BROKER_URL": broker_urls(env),
        "CELERYCTL_DOCTOR_TIMEOUT": numbers(waits=False),
        "CELERYCTL_PING_TIMEOUT": numbers(waits=True),
        "CELERYCTL_APP": st.sampled_from(
            ["", "nosuch_mod", "celeryctl.demo", "os:path", "celeryctl.demo:nosuch", "a b", "..x", ":x:"]
        ),
        "CELERYCTL_RESULT_BACKEND": st.sampled_from(
            ["rpc://", "", "nosuch://", "redis://localhost:1/0", "cache+memory://", "db+sqlite:///x.db"]
        ),
        "CELERYCTL_CONFIG": st.sampled_from(["", "/nonexistent/celeryctl.toml", "/", "celeryctl.toml"]),
        "CELERYCTL_DATA_DIR": st.sampled_from(["", "/dev/null/x", str(env.rabbit.data_dir)]),
    }

    @st.composite
    def one_or_two(draw: Any) -> dict[str, str]:
        keys = draw(st.lists(st.sampled_from(sorted(values)), min_size=1, max_size=2, unique=True))
        return {key: draw(values[key]) for key in keys}

    return one_or_two()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def prop_env(rabbit: RabbitNode, make_vhost: VhostFactory, tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("props")
    with socket.socket() as s:  # a port that refuses: bound then closed, nothing listens
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_"))}
    # The session node is celeryctl's node for this data dir (queues read through rabbitmqctl).
    base.update(CELERYCTL_DATA_DIR=str(rabbit.data_dir), COLUMNS="200", PYTHONUNBUFFERED="1", TERM="dumb")
    return Env(rabbit, make_vhost("props"), closed, base, root)


# --------------------------------------------------------------------------- families


def _pick(draw: Any, mutated: set[str], aspect: str, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """A valid value, or a generated (mostly bad) one when this aspect is the one being mutated."""
    return draw(bad if aspect in mutated else good)


def _mutations(draw: Any, aspects: list[str]) -> set[str]:
    """Which aspects of an otherwise valid command get generated values: none, one or two of them."""
    return set(draw(st.lists(st.sampled_from(aspects), max_size=2)))


NONE: st.SearchStrategy[list[str]] = st.just([])
SUBMIT_ASPECTS = ["task", "args", "kw", "kwargs", "timing", "queue", "priority", "count", "wait", "broker"]


def test_submit_with_generated_input(prop_env: Env) -> None:
    findings = Findings("submit")

    @settings(SETTINGS, max_examples=60)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        draw = data.draw
        m = _mutations(draw, SUBMIT_ASPECTS)
        argv = ["submit", _pick(draw, m, "task", st.sampled_from(["add", "celeryctl.demo.add", "mul"]), task_names)]
        argv += _pick(draw, m, "args", st.just(["1", "2"]), st.lists(json_or_not, max_size=3))
        for item in _pick(draw, m, "kw", NONE, st.lists(kw_items, min_size=1, max_size=2)):
            argv += ["-k", item]
        argv += _pick(draw, m, "kwargs", NONE, kwargs_json.map(lambda v: ["--kwargs", v]))
        argv += _pick(
            draw,
            m,
            "timing",
            st.sampled_from([[], ["--countdown", "1"], ["--eta", "2030-01-01T00:00:00"]]),
            st.one_of(
                numbers(waits=False).map(lambda v: ["--countdown", v]),
                eta_values.map(lambda v: ["--eta", v]),
                st.just(["--countdown", "1", "--eta", "2030-01-01T00:00:00"]),
            ),
        )
        argv += _pick(
            draw,
            m,
            "queue",
            st.sampled_from([[], ["--queue", "celery"], ["-Q", "hyp-q"]]),
            queue_names.map(lambda q: ["--queue", q]),
        )
        argv += _pick(
            draw,
            m,
            "priority",
            st.sampled_from([[], ["--priority", "0"], ["--priority", "9"]]),
            st.sampled_from(["10", "-1", "nan", "5.5", "abc", "", str(2**64)]).map(lambda v: ["--priority", v]),
        )
        argv += _pick(
            draw,
            m,
            "count",
            st.sampled_from([[], ["--count", "2"]]),
            st.sampled_from(["0", "-1", "nan", "abc", "1.5", "", str(2**64)]).map(lambda v: ["--count", v]),
        )
        # No worker consumes the throwaway vhost: a valid wait ends with --timeout (exit 8).
        argv += _pick(
            draw,
            m,
            "wait",
            st.sampled_from([[], ["--wait", "--timeout", "0.5"]]),
            numbers(waits=True).map(lambda v: ["--wait", "--timeout", v]),
        )
        argv += ["--json"] * draw(st.booleans())
        url = _pick(draw, m, "broker", st.just(prop_env.good_url), broker_urls(prop_env))
        run_env = dict(prop_env.base_env)
        if draw(st.booleans()):
            argv += ["--broker", url]
        else:
            run_env["CELERYCTL_BROKER_URL"] = url
        findings.check(run_inprocess(argv, run_env, prop_env.workdir()))

    run()
    findings.assert_none()


MONITOR_ASPECTS = ["queue", "timeout", "ping", "broker", "yes"]


def test_monitoring_commands_with_generated_input(prop_env: Env) -> None:
    findings = Findings("status/queues/purge/doctor")

    @settings(SETTINGS, max_examples=50)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        draw = data.draw
        command = draw(st.sampled_from(["status", "queues", "purge", "doctor"]))
        m = _mutations(draw, MONITOR_ASPECTS)
        argv = [command]
        if command == "purge":
            argv.append(_pick(draw, m, "queue", st.sampled_from(["celery", "hyp-none"]), queue_names))
            argv += _pick(draw, m, "yes", st.just(["--yes"]), NONE)
        if command in ("status", "queues"):
            for name in _pick(
                draw, m, "queue", st.sampled_from([[], ["celery"]]), st.lists(queue_names, min_size=1, max_size=2)
            ):
                argv += ["-Q", name]
            argv += ["--all"] * draw(st.booleans())
        if command == "status":
            argv += ["--timeout", _pick(draw, m, "timeout", st.sampled_from(SMALL_WAITS), numbers(waits=True))]
        if command == "doctor":
            argv += ["--timeout", _pick(draw, m, "timeout", st.sampled_from(["1", "2"]), numbers(waits=False))]
            argv += ["--ping-timeout", _pick(draw, m, "ping", st.sampled_from(SMALL_WAITS), numbers(waits=True))]
            argv += ["-v"] * draw(st.booleans())
        argv += ["--json"] * draw(st.booleans())
        url = _pick(draw, m, "broker", st.just(prop_env.good_url), broker_urls(prop_env))
        run_env = dict(prop_env.base_env)
        if draw(st.booleans()):
            argv += ["--broker", url]
        else:
            run_env["CELERYCTL_BROKER_URL"] = url
        findings.check(run_inprocess(argv, run_env, prop_env.workdir()), report_on_failure=command == "doctor")

    run()
    findings.assert_none()


SETTINGS_COMMANDS = [
    ["doctor", "-v", "--ping-timeout", "0.3"],
    ["queues"],
    ["status", "--timeout", "0.3"],
    ["submit", "add", "1", "2"],
    ["doctor", "--ping-timeout", "0.3"],
]


def test_every_settings_file_variant(prop_env: Env) -> None:
    """Each settings file of the list, once, with a command in rotation (half of them under --json)."""
    findings = Findings("settings files")
    for i, text in enumerate(settings_file_variants(prop_env)):
        command = SETTINGS_COMMANDS[i % len(SETTINGS_COMMANDS)]
        argv = [*command, *(["--json"] * (i // len(SETTINGS_COMMANDS) % 2))]
        outcome = run_inprocess(argv, dict(prop_env.base_env), prop_env.workdir(text))
        outcome.settings_file = text if isinstance(text, str) else repr(text)
        findings.check(outcome, report_on_failure=command[0] == "doctor")
    findings.assert_none()


def test_environment_variables_and_config(prop_env: Env) -> None:
    findings = Findings("CELERYCTL_* and --config")

    @settings(SETTINGS, max_examples=30)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        draw = data.draw
        command = draw(st.sampled_from(SETTINGS_COMMANDS))
        m = _mutations(draw, ["env", "env", "config"])
        text = draw(st.sampled_from([f'broker_url = "{prop_env.good_url}"\n', None]))
        run_env = {**prop_env.base_env, **_pick(draw, m, "env", st.just({}), cli_env(prop_env))}
        if text is None and "CELERYCTL_BROKER_URL" not in run_env:
            run_env["CELERYCTL_BROKER_URL"] = prop_env.good_url
        config = _pick(
            draw, m, "config", NONE, st.sampled_from(["", "/nonexistent.toml", "/"]).map(lambda c: ["--config", c])
        )
        argv = [*config, *command, *(["--json"] * draw(st.booleans()))]
        outcome = run_inprocess(argv, run_env, prop_env.workdir(text))
        outcome.settings_file = text
        findings.check(outcome, report_on_failure=command[0] == "doctor")

    run()
    findings.assert_none()


# --------------------------------------------------------------------------- setup-broker: the node must not change


def node_snapshot(rabbit: RabbitNode) -> dict[str, Any]:
    """Users (tags, hashes), vhosts, permissions and durable queues, from one export_definitions."""
    raw = rabbit.runner().json("export_definitions", "-")
    if isinstance(raw, dict) and set(raw) == {"message"}:  # 3.10 wraps the document in a string
        raw = json.loads(raw["message"])
    return {
        "users": sorted((u["name"], str(u.get("tags")), u.get("password_hash")) for u in raw["users"]),
        "vhosts": sorted(v["name"] for v in raw["vhosts"]),
        "permissions": sorted(
            (p["user"], p["vhost"], p["configure"], p["write"], p["read"]) for p in raw["permissions"]
        ),
        "queues": sorted((q["vhost"], q["name"]) for q in raw.get("queues", [])),
    }


def _diff(before: dict[str, Any], after: dict[str, Any]) -> str:
    parts = []
    for key in before:
        added = sorted(set(map(str, after[key])) - set(map(str, before[key])))
        removed = sorted(set(map(str, before[key])) - set(map(str, after[key])))
        if added or removed:
            parts.append(f"{key}: +{added[:3]} -{removed[:3]}")
    return "; ".join(parts)


PREFIX = "hyp-"
names = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8).map(
        lambda s: PREFIX + s
    ),
    st.sampled_from(["", PREFIX + "a\x01b", PREFIX + "x" * 300, PREFIX + "é" * 130, PREFIX + "ok", PREFIX + "a b"]),
)


def test_setup_broker_with_generated_input(prop_env: Env, make_vhost: VhostFactory) -> None:
    findings = Findings("setup-broker")
    rabbit = prop_env.rabbit
    # The node as the last run left it, when it was read after that run (a failed validation or
    # a --dry-run, which must not change it); None after a run that may have changed it.  Saves
    # one export_definitions (an Erlang VM, ~0.5 s) before most runs.
    known: list[dict[str, Any] | None] = [None]

    @settings(SETTINGS, max_examples=20)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        draw = data.draw
        m = _mutations(draw, ["user", "vhost", "regex", "tags", "port", "host", "node", "password"])
        fresh = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=6, max_size=6).map(
            lambda s: PREFIX + s
        )
        user, vhost = _pick(draw, m, "user", fresh, names), _pick(draw, m, "vhost", fresh, names)
        argv = ["setup-broker", "--user", user, "--vhost", vhost]
        for flag in ("--configure", "--write", "--read"):
            argv += [flag, _pick(draw, m, "regex", st.sampled_from([".*", "^hyp-.*", ""]), regexes)]
        tags = _pick(
            draw,
            m,
            "tags",
            st.sampled_from([[], ["management"]]),
            st.lists(st.sampled_from(["", "a,b", "x" * 300, "é", "a\x01"]), min_size=1, max_size=2),
        )
        for tag in tags:
            argv += ["--tags", tag]
        argv += _pick(
            draw,
            m,
            "port",
            st.sampled_from([[], ["--port", str(rabbit.port)]]),
            st.sampled_from(PORT_VALUES).map(lambda v: ["--port", v]),
        )
        argv += _pick(
            draw,
            m,
            "host",
            st.sampled_from([[], ["--host", "127.0.0.1"]]),
            st.sampled_from(["", "a" * 64, "bad host", "h\x01", "[::1", "nosuch.invalid"]).map(lambda v: ["--host", v]),
        )
        argv += _pick(
            draw,
            m,
            "node",
            NONE,
            st.sampled_from(["", "a@b@c", "bad node", "nosuch@localhost"]).map(lambda v: ["--node", v]),
        )
        argv += _pick(
            draw,
            m,
            "password",
            NONE,
            st.sampled_from(["p", "", "é", "a\nb", "x" * 300]).map(lambda v: ["--password", v]),
        )
        argv += draw(st.sampled_from([[], ["--no-save"], ["--dry-run"], ["--json"], ["--json", "--no-save"]]))
        before = known[0] or node_snapshot(rabbit)
        known[0] = None
        outcome = run_subprocess(argv, dict(prop_env.base_env), prop_env.workdir())
        extra: list[tuple[str, str]] = []
        if outcome.code in (2, 3, 70) or "--dry-run" in argv:
            after = node_snapshot(rabbit)
            changed = _diff(before, after)
            if changed:
                extra.append(("changed the node although it failed validation (or --dry-run)", changed))
            known[0] = after
        findings.check(outcome, extra)

    try:
        run()
    finally:  # whatever the runs created is deleted with the module's vhosts
        left = node_snapshot(rabbit)
        make_vhost.users += sorted({u for u, _, _ in left["users"] if u.startswith(PREFIX)} - set(make_vhost.users))
        make_vhost.vhosts += sorted({v for v in left["vhosts"] if v.startswith(PREFIX)} - set(make_vhost.vhosts))
    findings.assert_none()


# --------------------------------------------------------------------------- processes: worker, flower, top, broker, demo


@pytest.fixture(scope="module")
def failing_server(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rabbitmq-server that fails at once: ``broker start`` with valid input ends (exit 9)."""
    return fake_bin(tmp_path_factory.mktemp("fake-rabbit"), {"rabbitmq-server": "echo 'boom' >&2\nexit 1\n"}, tools=())


def _worker_args(draw: Any, env: Env) -> list[str]:
    """The broker refuses, so every valid run ends (exit 6); a queue name RabbitMQ cannot take
    (empty, over 255 bytes) gets the real broker instead: the run must end as a usage error."""
    argv: list[str] = []
    queues = [q.replace("\x00", "") for q in draw(st.lists(queue_names, min_size=1, max_size=2))]  # no NUL in argv
    for q in queues:
        argv += ["-Q", q]
    if draw(st.booleans()):
        argv += ["-c", draw(numbers(waits=False))]
    if draw(st.booleans()):
        argv += ["-P", draw(st.sampled_from(["solo", "threads", "eventlet", "gevent", "nosuch", ""]))]
    if draw(st.booleans()):
        argv += ["-l", draw(st.sampled_from(["INFO", "nosuch", "", "debug"]))]
    if draw(st.booleans()):
        argv += ["--wait-for-broker", draw(numbers(waits=True))]
    unusable = any(not q.strip(", ") or len(q.encode()) > 255 for q in queues)
    return [*argv, "--broker", env.good_url if unusable else env.refused_url]


def _flower_args(draw: Any, env: Env) -> list[str]:
    """At least one bad value (the port), so it must end."""
    argv = ["--port", draw(st.sampled_from(PORT_VALUES))]
    if draw(st.booleans()):
        argv += ["--address", draw(st.sampled_from(["127.0.0.1", "nosuch.invalid", "", "300.1.1.1", "::1"]))]
    if draw(st.booleans()):
        argv += ["--url-prefix", draw(st.sampled_from(["x", "", "/a b", "é"]))]
    return [*argv, "--broker", env.refused_url]


def _top_args(draw: Any, env: Env) -> list[str]:
    argv = ["--duration", draw(numbers(waits=True))]
    if draw(st.booleans()):
        argv += ["--refresh", draw(numbers(waits=True))]
    argv += ["--json"] * draw(st.booleans())
    return [*argv, "--broker", draw(st.sampled_from([env.good_url, env.refused_url]))]


def _broker_start_args(draw: Any, env: Env) -> list[str]:
    argv = ["--data-dir", str(env.workdir() / "data")]
    if draw(st.booleans()):
        argv += ["--port", draw(st.sampled_from([*PORT_VALUES, "5", "32767", "40000"]))]
    if draw(st.booleans()):
        argv += ["--timeout", draw(numbers(waits=True))]
    return argv + ["--json"] * draw(st.booleans())


def _broker_status_args(draw: Any, env: Env) -> list[str]:
    argv = ["--data-dir", draw(st.sampled_from([str(env.workdir()), "/dev/null/x", ""]))]
    return argv + ["--json"] * draw(st.booleans())


def _demo_args(draw: Any, env: Env) -> list[str]:
    """Against a broker that refuses."""
    argv: list[str] = []
    for flag, values in (("--seconds", numbers(waits=False)), ("--timeout", numbers(waits=True))):
        if draw(st.booleans()):
            argv += [flag, draw(values)]
    if draw(st.booleans()):
        argv += ["--port", draw(st.sampled_from(PORT_VALUES))]
    return argv + ["--no-save", "--broker", env.refused_url] + ["--json"] * draw(st.booleans())


PROCESS_ARGS = {
    "worker": _worker_args,
    "flower": _flower_args,
    "top": _top_args,
    "broker start": _broker_start_args,
    "broker status": _broker_status_args,
    "demo": _demo_args,
}


def test_process_commands_with_generated_input(prop_env: Env, failing_server: Path) -> None:
    findings = Findings("worker/flower/top/broker/demo")

    @settings(SETTINGS, max_examples=30)
    @given(st.data())
    def run(data: st.DataObject) -> None:
        draw = data.draw
        command = draw(st.sampled_from(["worker", "worker", "flower", "top", "broker start", "broker status", "demo"]))
        run_env = dict(prop_env.base_env)
        argv = command.split() + PROCESS_ARGS[command](draw, prop_env)
        if command == "broker start":  # a fake rabbitmq-server that fails: valid input ends with exit 9
            run_env["CELERYCTL_RABBITMQ_BIN_DIR"] = str(failing_server)
        findings.check(run_subprocess(argv, run_env, prop_env.workdir()))

    run()
    findings.assert_none()
