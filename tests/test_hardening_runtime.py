"""Issue 11, runtime paths: help without arguments, Ctrl-C under --json, optional libraries, apps
that exit at import, over-long queue names in an app, literal text, flower's port and address, the
timeout hint.  Real node and real worker processes wherever the path touches them."""

from __future__ import annotations

import importlib.util
import json
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celeryctl.rabbitmq.node import pick_free_port
from tests.conftest import CELERYCTL_WORKER, CliRun, RabbitNode, Vhost, VhostFactory, Worker, Workers, wait_for

CLOSED = "amqp://guest:guest@127.0.0.1:1//"  # nothing listens: anything that reaches the broker fails


@pytest.fixture(scope="module")
def vhost(make_vhost: VhostFactory) -> Vhost:
    return make_vhost("hard-rt")


@pytest.fixture(scope="module")
def demo_worker(vhost: Vhost, module_workers: Workers) -> Worker:
    return module_workers.start(CELERYCTL_WORKER, vhost.url, "-c", "1", env={"CELERYCTL_BROKER_URL": vhost.url})


@pytest.fixture
def env(vhost: Vhost) -> dict[str, str]:
    return {"CELERYCTL_BROKER_URL": vhost.url}


class Spawned:
    """A ``celeryctl`` process with its stdout and stderr in files, to be signalled while it runs."""

    def __init__(self, args: tuple[str, ...], env: dict[str, str], workdir: Path) -> None:
        self.out, self.err = workdir / "stdout", workdir / "stderr"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "celeryctl", *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=workdir,
            )

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def signal(self, sig: int, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


SpawnRun = Callable[..., Spawned]


@pytest.fixture
def spawn(tmp_path: Path, isolated_env: dict[str, str]) -> Iterator[SpawnRun]:
    started: list[Spawned] = []

    def run(*args: str, env: dict[str, str] | None = None) -> Spawned:
        workdir = tmp_path / f"spawn{len(started)}"
        workdir.mkdir()
        proc = Spawned(args, {**isolated_env, **(env or {})}, workdir)
        started.append(proc)
        return proc

    try:
        yield run
    finally:
        for proc in started:
            proc.kill()


def depth(rabbit: RabbitNode, vhost: Vhost, queue: str) -> int:
    """Messages in ``queue`` now: a passive declare (rabbitmqctl's count of a quorum queue lags)."""
    import pika
    import pika.exceptions

    conn = pika.BlockingConnection(pika.URLParameters(vhost.url))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    except pika.exceptions.ChannelClosedByBroker:
        return 0
    finally:
        if conn.is_open:
            conn.close()


def one_json(text: str) -> dict:  # type: ignore[type-arg]
    doc = json.loads(text)  # raises when there is anything but one document
    assert isinstance(doc, dict)
    return doc


# --------------------------------------------------------------------------- 1. no arguments


def test_no_arguments_prints_help_and_exits_0(cli: CliRun, tmp_path: Path, isolated_env: dict[str, str]) -> None:
    r = cli()  # python -m celeryctl
    assert r.returncode == 0, r.output
    assert r.stdout.startswith("Usage: celeryctl [OPTIONS] COMMAND [ARGS]...") and "setup-broker" in r.stdout
    script = shutil.which("celeryctl", path=str(Path(sys.executable).parent))
    assert script is not None
    direct = subprocess.run([script], capture_output=True, text=True, env=isolated_env, cwd=tmp_path, timeout=60)
    assert (direct.returncode, direct.stdout) == (0, r.stdout)
    group = cli("broker")
    assert group.returncode == 0 and group.stdout.startswith("Usage: celeryctl broker"), group.output


# --------------------------------------------------------------------------- 2./3. Ctrl-C


def test_ctrl_c_while_waiting_under_json_is_one_error_document(
    spawn: SpawnRun,
    rabbit: RabbitNode,
    vhost: Vhost,
    env: dict[str, str],
) -> None:
    queue = "nobody-waits"
    proc = spawn("submit", "add", "1", "2", "--wait", "--json", "-Q", queue, env=env)
    wait_for(lambda: depth(rabbit, vhost, queue) == 1, timeout=60, what="the task to be queued")
    assert proc.signal(signal.SIGINT) == 130, proc.stderr
    doc = one_json(proc.stdout)
    error = doc["error"]
    assert doc["ok"] is False and (error["code"], error["exit_code"]) == ("interrupted", 130)
    assert error["details"]["task_id"] in error["message"] and error["details"]["state"] == "PENDING"
    assert "Traceback" not in proc.stderr


def test_ctrl_c_while_waiting_without_json_is_one_line(
    spawn: SpawnRun,
    rabbit: RabbitNode,
    vhost: Vhost,
    env: dict[str, str],
) -> None:
    queue = "nobody-waits-text"
    proc = spawn("submit", "add", "1", "2", "--wait", "-Q", queue, env=env)
    wait_for(lambda: depth(rabbit, vhost, queue) == 1, timeout=60, what="the task to be queued")
    assert proc.signal(signal.SIGINT) == 130, proc.stderr
    task_id = proc.stdout.strip()
    last = proc.stderr.splitlines()[-1]
    assert last.startswith(f"interrupted: stopped waiting for task celeryctl.demo.add[{task_id}]"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_ctrl_c_in_top_under_json_is_one_error_document(
    spawn: SpawnRun,
    rabbit: RabbitNode,
    vhost: Vhost,
    env: dict[str, str],
) -> None:
    proc = spawn("top", "--json", "--duration", "120", env=env)

    def connected() -> bool:
        return bool(
            rabbit.runner().json("list_connections", "vhost")
            and any(c["vhost"] == vhost.name for c in rabbit.runner().json("list_connections", "vhost"))
        )

    wait_for(connected, timeout=60, what="top to connect")
    assert proc.signal(signal.SIGINT) == 130, proc.stderr
    error = one_json(proc.stdout)["error"]
    assert (error["code"], error["exit_code"]) == ("interrupted", 130)
    assert "Traceback" not in proc.stderr


def test_ctrl_c_while_publishing_many_says_what_the_broker_confirmed(
    spawn: SpawnRun,
    rabbit: RabbitNode,
    vhost: Vhost,
    env: dict[str, str],
) -> None:
    queue = "bulk-interrupted"
    proc = spawn("submit", "add", "1", "2", "--count", "5000000", "--json", "-Q", queue, env=env)
    wait_for(lambda: depth(rabbit, vhost, queue) >= 1000, timeout=60, what="some tasks to be queued")
    assert proc.signal(signal.SIGINT) == 130, proc.stderr
    error = one_json(proc.stdout)["error"]
    details = error["details"]
    assert (error["code"], error["exit_code"]) == ("interrupted", 130)
    assert details["requested"] == 5000000
    assert 1000 <= details["confirmed"] <= details["published"] < 5000000
    assert len(details["ids"]) == len(set(details["ids"])) == details["confirmed"]
    assert f"the broker confirmed {details['confirmed']} of the 5000000 tasks" in error["message"]
    # what the broker confirmed is queued (published but unconfirmed messages may be too)
    assert details["confirmed"] <= depth(rabbit, vhost, queue) <= details["published"]
    rabbit.runner().run("purge_queue", "-p", vhost.name, "--", queue)


def test_broker_lost_while_publishing_many_says_what_the_broker_confirmed(
    spawn: SpawnRun,
    rabbit: RabbitNode,
    vhost: Vhost,
    env: dict[str, str],
) -> None:
    queue = "bulk-lost"
    proc = spawn("submit", "add", "1", "2", "--count", "5000000", "--json", "-Q", queue, env=env)
    wait_for(lambda: depth(rabbit, vhost, queue) >= 1000, timeout=60, what="some tasks to be queued")
    rabbit.runner().run("close_all_connections", "-p", vhost.name, "test: broker lost")
    assert proc.proc.wait(60) == 6, proc.stderr
    error = one_json(proc.stdout)["error"]
    details = error["details"]
    assert error["code"] == "unreachable"
    assert 1000 <= details["confirmed"] <= details["published"] < 5000000
    assert len(details["ids"]) == details["confirmed"]
    assert f"the broker confirmed {details['confirmed']} of the 5000000 tasks" in error["message"]
    rabbit.runner().run("purge_queue", "-p", vhost.name, "--", queue)


def test_ctrl_c_while_waiting_for_many_reports_progress(
    spawn: SpawnRun,
    rabbit: RabbitNode,
    vhost: Vhost,
    env: dict[str, str],
) -> None:
    queue = "bulk-waiting"
    proc = spawn("submit", "add", "1", "2", "--count", "20", "--wait", "--json", "-Q", queue, env=env)
    wait_for(lambda: depth(rabbit, vhost, queue) == 20, timeout=60, what="the tasks to be queued")
    assert proc.signal(signal.SIGINT) == 130, proc.stderr
    details = one_json(proc.stdout)["error"]["details"]
    assert (details["submitted"], details["succeeded"], details["failed"], details["unfinished"]) == (20, 0, 0, 20)
    assert len(details["ids"]) == 20
    rabbit.runner().run("purge_queue", "-p", vhost.name, "--", queue)


# --------------------------------------------------------------------------- 4. optional libraries


@pytest.mark.parametrize("pool", ["eventlet", "gevent"])
def test_worker_with_a_green_pool_that_is_not_installed_exits_4(cli: CliRun, pool: str) -> None:
    if importlib.util.find_spec(pool) is not None:
        pytest.skip(f"{pool} is installed here")
    r = cli("worker", "-P", pool, "--broker", CLOSED)
    assert r.returncode == 4, r.output
    assert r.stderr.splitlines() == [
        f"error: the {pool} pool needs the Python package '{pool}', which is not installed",
        f"hint: pip install 'celery[{pool}]'",
    ]


@pytest.mark.parametrize(
    ("command", "backend", "module", "extra"),
    [
        (("worker",), "redis://localhost:6379/0", "redis", "redis"),
        (("submit", "add", "1", "2"), "redis://localhost:6379/0", "redis", "redis"),
        (("submit", "add", "1", "2", "--wait"), "db+sqlite:///results.db", "sqlalchemy", "sqlalchemy"),
        (("worker",), "db+sqlite:///results.db", "sqlalchemy", "sqlalchemy"),
    ],
)
def test_a_result_backend_whose_library_is_missing_exits_4(
    cli: CliRun, command: tuple[str, ...], backend: str, module: str, extra: str
) -> None:
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    r = cli(*command, "--backend", backend, "--broker", CLOSED)  # before the broker is even asked
    assert r.returncode == 4, r.output
    assert r.stderr.splitlines() == [
        f"error: the result backend {backend} needs the Python package '{module}', which is not installed",
        f"hint: pip install 'celery[{extra}]'",
    ]


# --------------------------------------------------------------------------- 5. apps that exit at import


@pytest.mark.parametrize("command", [("worker",), ("submit", "add", "1", "2"), ("status",)])
def test_an_app_that_calls_sys_exit_at_import_is_exit_10(cli: CliRun, tmp_path: Path, command: tuple[str, ...]) -> None:
    work = tmp_path / "exiting"
    work.mkdir()
    (work / "exiting_app.py").write_text("import sys\n\nsys.exit(3)\n")
    r = cli(*command, "-A", "exiting_app", "--broker", CLOSED, cwd=work)
    assert r.returncode == 10, r.output
    assert r.stderr.splitlines()[0] == "error: app module 'exiting_app' called sys.exit(3) while it was imported"
    assert len(r.stderr.splitlines()) == 2 and "Traceback" not in r.output


def test_an_app_that_raises_at_import_is_one_line_exit_10(cli: CliRun, tmp_path: Path) -> None:
    work = tmp_path / "raising"
    work.mkdir()
    (work / "raising_app.py").write_text("raise RuntimeError('no config here')\n")
    r = cli("worker", "-A", "raising_app", "--broker", CLOSED, cwd=work)
    assert r.returncode == 10, r.output
    assert r.stderr.splitlines()[0] == ("error: cannot import app module 'raising_app': RuntimeError: no config here")
    assert "Traceback" not in r.output


# --------------------------------------------------------------------------- 6. the app's queue names


@pytest.mark.parametrize(
    ("setting", "config"),
    [
        ("task_default_queue", "app.conf.task_default_queue = 'q' * 300"),
        ("task_queues", "from kombu import Queue\napp.conf.task_queues = [Queue('celery'), Queue('q' * 300)]"),
    ],
)
def test_an_over_long_queue_name_in_the_app_stops_the_worker_before_celery(
    cli: CliRun, tmp_path: Path, vhost: Vhost, setting: str, config: str
) -> None:
    work = tmp_path / "longq"
    work.mkdir()
    (work / "longq_app.py").write_text(
        f"from celery import Celery\n\napp = Celery('longq_app')\n{config}\n\n\n@app.task\ndef add(x, y):\n    return x + y\n"
    )
    r = cli("worker", "-A", "longq_app", "-P", "solo", "--broker", vhost.url, cwd=work)
    assert r.returncode == 3, r.output
    assert r.stderr.splitlines() == [
        f"error: app 'longq_app': queue name {'q' * 40!r}... in {setting} is 300 bytes long, the limit is 255",
        f"hint: fix {setting} in the app's configuration",
    ]


def test_a_worker_that_fails_to_start_does_not_exit_0(cli: CliRun, tmp_path: Path, vhost: Vhost) -> None:
    work = tmp_path / "broken_step"
    work.mkdir()
    (work / "broken_step_app.py").write_text(
        "from celery import Celery, bootsteps\n\napp = Celery('broken_step_app')\n\n\n"
        "class Broken(bootsteps.StartStopStep):\n    def start(self, worker):\n"
        "        raise RuntimeError('the app cannot start')\n\n\napp.steps['worker'].add(Broken)\n"
    )
    r = cli("worker", "-A", "broken_step_app", "-P", "solo", "--broker", vhost.url, cwd=work)
    assert r.returncode == 1, r.output
    assert "Unrecoverable error: RuntimeError('the app cannot start')" in r.stderr


# --------------------------------------------------------------------------- 7. literal text


def test_markup_and_emoji_in_task_text_are_printed_literally(
    cli: CliRun, env: dict[str, str], demo_worker: Worker
) -> None:
    text = "[red]x[/red] :x: [bold]"
    failed = cli("submit", "fail", text, "--wait", env=env)
    assert failed.returncode == 1, failed.output
    assert failed.stderr.splitlines()[-2].endswith(f"failed: DemoFailure: {text}"), failed.stderr
    result = cli("submit", "add", "[bold]y[/bold] ", ":x:", "--wait", env=env)
    assert result.returncode == 0, result.output
    assert result.stdout == '"[bold]y[/bold] :x:"\n'


def test_literal_cells_keep_markup_and_emoji() -> None:
    from rich.console import Console

    from celeryctl import render

    console = Console(record=True, width=80, emoji=False)
    console.print(render.literal("[red]x[/red] :x:"))
    assert console.export_text() == "[red]x[/red] :x:\n"


# --------------------------------------------------------------------------- 8. flower


def test_flower_on_a_port_in_use_exits_9_naming_it(cli: CliRun, env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli("flower", "--port", str(port), env=env)
    assert r.returncode == 9, r.output
    assert r.stderr.splitlines()[0] == (
        f"error: port {port} on 127.0.0.1 is already in use; Flower cannot listen there"
    )
    assert "Traceback" not in r.output


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("no-such-host.invalid", "error: --address no-such-host.invalid: the name does not resolve"),
        ("192.0.2.1", "error: --address 192.0.2.1 is not an address of this machine"),
    ],
)
def test_flower_with_an_unknown_address_is_a_usage_error(
    cli: CliRun, env: dict[str, str], address: str, message: str
) -> None:
    r = cli("flower", "--address", address, "--unsafe-no-auth", env=env)
    assert r.returncode == 2, r.output
    assert r.stderr.splitlines()[0].startswith(message), r.stderr
    assert "Traceback" not in r.output


def test_sigterm_stops_flower_quietly(
    spawn: SpawnRun,
    env: dict[str, str],
    demo_worker: Worker,
) -> None:
    port = pick_free_port([], set())
    proc = spawn("flower", "--port", str(port), env=env)

    def serving() -> bool:
        assert proc.proc.poll() is None, proc.stderr
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/workers", timeout=2) as page:
                return page.status == 200
        except OSError:
            return False

    wait_for(serving, timeout=60, what="flower to serve")
    assert proc.signal(signal.SIGTERM) == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- 9. the timeout hint


def test_timeout_with_rpc_says_the_result_cannot_be_fetched_later(
    cli: CliRun, env: dict[str, str], rabbit: RabbitNode, vhost: Vhost
) -> None:
    queue = "nobody-timeout"
    r = cli("submit", "add", "1", "2", "--wait", "--timeout", "0.5", "-Q", queue, env=env)
    assert r.returncode == 8, r.output
    hint = r.stderr.splitlines()[-1]
    task_id = hint.split("result of ")[1].split(",")[0]
    assert hint == (
        f"hint: wait longer with --timeout; with the rpc:// backend only this process could receive the result of "
        f"{task_id}, a later one cannot: for results you can fetch later use a backend that stores them, "
        "e.g. --backend db+sqlite:///results.db or redis://localhost:6379/0 (on the worker too)"
    )
    assert f"[{task_id}] did not finish within 0.5 s" in r.stderr
    rabbit.runner().run("purge_queue", "-p", vhost.name, "--", queue)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("add",), "add() missing 2 required positional arguments: 'x' and 'y'"),
        (("add", "1", "2", "-k", "a=1"), "add() got an unexpected keyword argument 'a'"),
        (("add", "1", "2", "3", "--count", "3"), "add() takes 2 positional arguments but 3 were given"),
    ],
    ids=["missing", "unknown-kwarg", "too-many-bulk"],
)
def test_arguments_that_do_not_fit_the_task_are_a_usage_error_and_nothing_is_sent(
    cli: CliRun, rabbit: RabbitNode, vhost: Vhost, env: dict[str, str], args: tuple[str, ...], needle: str
) -> None:
    queue = "hard-rt-args"
    result = cli("submit", *args, "--queue", queue, "--json", env=env)
    assert result.returncode == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["message"] == f"task celeryctl.demo.add: {needle}"
    assert error["hint"] == "it is called as add(x, y)"
    assert "Traceback" not in result.output
    # Refused before anything was published: the queue was never even declared.
    listed = rabbit.runner().run("list_queues", "-p", vhost.name, "name", "--formatter", "json")
    assert queue not in listed.stdout
