"""Hardening: no file celeryctl writes follows a symbolic link, and each is private (issue 11).

Every file celeryctl writes goes through ``celeryctl/files.py``: the settings file, the private
node's files and the logs of the programs it starts.  A link planted at the target is refused
with one line (exit 5) and the file it points to stays as it was; a link planted at the old
predictable temporary name (``.NAME.tmp``) is never used.  The settings file keeps each key once,
however the user wrote it.
"""

from __future__ import annotations

import os
import stat
import sys
import uuid
from pathlib import Path

import pytest

from celeryctl.errors import ConfigError, PermissionDeniedError
from celeryctl.files import open_log, private_dir, write_file
from celeryctl.rabbitmq.node import Node, pick_free_port
from celeryctl.settings import load_settings, save_settings
from tests.conftest import CliRun, RabbitNode

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

VICTIM_TEXT = "precious: not celeryctl's to write\n"


def victim(tmp_path: Path) -> Path:
    """A file some other program owns, that a planted link points to."""
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    path.chmod(0o644)
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- files.py itself


def test_write_file_is_private_and_refuses_a_link_at_the_target(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    write_file(target, "one\n")
    assert target.read_text() == "one\n" and mode(target) == 0o600
    write_file(target, "two\n", mode=0o400)
    assert target.read_text() == "two\n" and mode(target) == 0o400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temp file left behind

    link = tmp_path / "link.txt"
    link.symlink_to(victim(tmp_path))
    with pytest.raises(PermissionDeniedError) as err:
        write_file(link, "secret\n")
    assert str(link) in err.value.message and "symbolic link" in err.value.message
    assert err.value.hint and "rm" in err.value.hint
    assert (tmp_path / "victim.txt").read_text() == VICTIM_TEXT and link.is_symlink()


def test_write_file_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        write_file(tmp_path / "missing-dir" / "f", "x")
    assert str(tmp_path / "missing-dir" / "f") in err.value.message
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(PermissionDeniedError):
            write_file(locked / "f", "x")


def test_private_dir_creates_0700_and_tightens_an_existing_one(tmp_path: Path) -> None:
    fresh = private_dir(tmp_path / "a" / "b")
    assert mode(fresh) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    private_dir(loose)
    assert mode(loose) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(PermissionDeniedError) as err:
        private_dir(shared)
    assert "shared directory" in err.value.message
    assert mode(shared) == 0o1777


def test_open_log_is_private_and_refuses_a_link(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("old")
    log.chmod(0o644)
    with open_log(log) as fh:
        fh.write(b"new")
    assert log.read_text() == "new" and mode(log) == 0o600
    link = tmp_path / "link.log"
    link.symlink_to(victim(tmp_path))
    with pytest.raises(PermissionDeniedError) as err:
        open_log(link)
    assert "symbolic link" in err.value.message
    assert (tmp_path / "victim.txt").read_text() == VICTIM_TEXT


# --------------------------------------------------------------------------- the settings file


def test_save_settings_never_follows_a_link_at_the_old_temp_name_or_the_file(tmp_path: Path) -> None:
    target = victim(tmp_path)
    (tmp_path / ".celeryctl.toml.tmp").symlink_to(target)
    config = tmp_path / "celeryctl.toml"
    save_settings(config, {"broker_url": "amqp://u:secret@h:5672/v"})
    assert target.read_text() == VICTIM_TEXT
    assert not config.is_symlink() and mode(config) == 0o600
    assert tomllib.loads(config.read_text()) == {"broker_url": "amqp://u:secret@h:5672/v"}

    config.unlink()
    config.symlink_to(target)
    with pytest.raises(PermissionDeniedError):
        save_settings(config, {"broker_url": "amqp://u:secret@h:5672/v"})
    assert target.read_text() == VICTIM_TEXT and config.is_symlink()


URL = "amqp://celery:s3cret@127.0.0.1:5672/celery"
SHAPES = {
    "empty": "",
    "bare": 'broker_url = "amqp://old@h//"\n',
    "double-quoted": '"broker_url" = "amqp://old@h//"\n',
    "single-quoted": "'broker_url' = 'amqp://old@h//'\n",
    "spaced": '   broker_url\t=   "amqp://old@h//"   # old broker\napp = "myapp"\n',
    "no-spaces": 'broker_url="amqp://old@h//"\n',
    "escaped-quoted": '"broker\\u005furl" = "amqp://old@h//"\n',
    "crlf": 'app = "myapp"\r\nbroker_url = "amqp://old@h//"\r\n',
    "no-final-newline": 'app = "myapp"',
    "comments": '# my settings\n\napp = "myapp"  # the app\n\n# end\n',
    "multi-line value": 'app = """myapp"""\nbroker_url = """\namqp://old@h//"""\n',
    "multi-line other": 'app = """\nbroker_url = "not a key"\n"""\n',
    "table": 'app = "myapp"\n\n[tool.other]\nbroker_url = "theirs"\n',
    "only a table": "# header\n[tool.other]\nx = 1\n",
    "quoted in table": '[tool]\n"broker_url" = "theirs"\n',
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_save_settings_keeps_each_key_once_whatever_the_file_looks_like(tmp_path: Path, shape: str) -> None:
    config = tmp_path / "celeryctl.toml"
    config.write_bytes(SHAPES[shape].encode())
    before = tomllib.loads(SHAPES[shape])
    save_settings(config, {"broker_url": URL})
    text = config.read_text()
    after = tomllib.loads(text)  # parses: no key twice
    assert after == {**before, "broker_url": URL}  # tables keep their own keys
    # and a second save changes nothing more
    save_settings(config, {"broker_url": URL})
    assert config.read_text() == text
    if "tool" not in before:  # celeryctl itself reads back what it wrote
        assert load_settings(config=config, env={}, cwd=tmp_path).broker_url == URL


def test_save_settings_refuses_a_broken_file_and_leaves_it(tmp_path: Path) -> None:
    config = tmp_path / "celeryctl.toml"
    config.write_text('broker_url = "unterminated\n')
    with pytest.raises(ConfigError) as err:
        save_settings(config, {"broker_url": URL})
    assert str(config) in err.value.message and URL not in err.value.message
    assert config.read_text() == 'broker_url = "unterminated\n'


def test_setup_broker_with_a_link_at_the_old_temp_name_writes_the_settings_file_only(
    cli: CliRun, rabbit: RabbitNode, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    target = victim(tmp_path)
    (work / ".celeryctl.toml.tmp").symlink_to(target)
    user = vhost = f"files-{uuid.uuid4().hex[:8]}"
    env = {"CELERYCTL_DATA_DIR": str(rabbit.data_dir)}
    try:
        r = cli("setup-broker", "--user", user, "--vhost", vhost, env=env)
        assert r.returncode == 0, r.output
    finally:
        runner = rabbit.runner()
        runner.run("delete_user", "--", user, check=False)
        runner.run("delete_vhost", "--", vhost, check=False)
    assert target.read_text() == VICTIM_TEXT
    config = work / "celeryctl.toml"
    assert not config.is_symlink() and mode(config) == 0o600
    saved = tomllib.loads(config.read_text())["broker_url"]
    assert saved.startswith(f"amqp://{user}:") and saved.endswith(f":{rabbit.port}/{vhost}")


# --------------------------------------------------------------------------- the private node's files

NODE_FILES = [
    "state.json",
    "rabbitmq.conf",
    "enabled_plugins",
    "rabbitmq-env.conf",
    "advanced.config",
    "home/.erlang.cookie",
    "log/boot.log",
]


@pytest.mark.parametrize("name", NODE_FILES)
def test_broker_start_refuses_a_link_planted_at_a_node_file(cli: CliRun, tmp_path: Path, name: str) -> None:
    data = tmp_path / "d"
    link = data / "node" / name
    link.parent.mkdir(parents=True)
    target = victim(tmp_path)
    if name == "home/.erlang.cookie":  # an existing cookie is kept as it is: a dangling link is the trap
        target.unlink()
    link.symlink_to(target)
    try:
        r = cli("broker", "start", "--port", str(pick_free_port([], set())), env={"CELERYCTL_DATA_DIR": str(data)})
    finally:  # a node that started after all (it did before) is stopped
        Node(data / "node").stop()
    assert r.returncode == 5, r.output
    assert f"refusing to write {link}: it is a symbolic link" in r.stderr
    assert "Traceback" not in r.output
    if name == "home/.erlang.cookie":
        assert not target.exists()
    else:
        assert target.read_text() == VICTIM_TEXT
    assert Node(data / "node").processes() == []


def test_broker_start_ignores_links_at_the_old_temp_names_and_makes_the_data_dir_private(
    cli: CliRun, tmp_path: Path
) -> None:
    data = tmp_path / "d"
    node_dir = data / "node"
    node_dir.mkdir(parents=True)
    data.chmod(0o755)
    target = victim(tmp_path)
    for name in NODE_FILES:
        path = node_dir / name
        path.parent.mkdir(exist_ok=True)
        path.with_name(f".{path.name}.tmp").symlink_to(target)
    node = Node(node_dir)
    env = {"CELERYCTL_DATA_DIR": str(data)}
    try:
        r = cli("broker", "start", "--port", str(pick_free_port([], set())), env=env)
        assert r.returncode == 0, r.output
    finally:
        node.stop()
    assert node.processes() == []
    assert target.read_text() == VICTIM_TEXT
    for d in (data, node_dir, node.home, node.log_dir):
        assert mode(d) == 0o700, d
    for name in NODE_FILES:
        path = node_dir / name
        assert not path.is_symlink() and mode(path) in (0o600, 0o400), name


def test_demo_worker_log_is_private_in_a_private_data_dir(cli: CliRun, rabbit: RabbitNode, tmp_path: Path) -> None:
    data = tmp_path / "demo-data"
    data.mkdir()
    data.chmod(0o755)  # as the first release left it
    log = data / "demo-worker.log"
    log.write_text("old log\n")
    log.chmod(0o644)
    r = cli("demo", "--broker", rabbit.url, "--seconds", "0", "--no-save", env={"CELERYCTL_DATA_DIR": str(data)})
    assert r.returncode == 0, r.output
    assert r.stdout.strip().splitlines()[-1] == "3"
    assert mode(data) == 0o700
    assert mode(log) == 0o600 and "old log" not in log.read_text()


def test_demo_refuses_a_link_at_its_worker_log(cli: CliRun, rabbit: RabbitNode, tmp_path: Path) -> None:
    data = tmp_path / "demo-data"
    data.mkdir()
    target = victim(tmp_path)
    (data / "demo-worker.log").symlink_to(target)
    r = cli("demo", "--broker", rabbit.url, "--seconds", "0", "--no-save", env={"CELERYCTL_DATA_DIR": str(data)})
    assert r.returncode == 5, r.output
    assert f"refusing to write {data / 'demo-worker.log'}: it is a symbolic link" in r.stderr
    assert "Traceback" not in r.output
    assert target.read_text() == VICTIM_TEXT
