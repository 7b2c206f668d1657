"""Settings: precedence flag > env > file > default, and every kind of broken file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from celeryctl.broker import mask_url
from celeryctl.errors import ConfigError
from celeryctl.settings import FALLBACK_BROKER_URL, load_settings, save_settings


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    write(tmp_path / "celeryctl.toml", 'broker_url = "amqp://file@h1//"\nresult_backend = "rpc://file"\napp = "fileapp"\n')
    env = {"CELERYCTL_BROKER_URL": "amqp://env@h2//", "CELERYCTL_APP": "envapp", "HOME": str(tmp_path)}
    s = load_settings({"broker_url": "amqp://flag@h3//"}, env=env, cwd=tmp_path)
    assert s.broker_url == "amqp://flag@h3//"  # flag wins over env and file
    assert s.app == "envapp"  # env wins over file
    assert s.result_backend == "rpc://file"  # file wins over default
    assert s.sources["broker_url"] == "flag --broker"
    assert s.sources["app"] == "env CELERYCTL_APP"
    assert s.sources["result_backend"].startswith("file ")


def test_defaults_with_nothing_set(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    s = load_settings(env=env, cwd=tmp_path)
    assert s.result_backend == "rpc://"
    assert s.app is None
    assert s.data_dir == tmp_path / ".local" / "share" / "celeryctl"
    # no celeryctl node has ever run in this data dir: the classic localhost URL
    assert s.broker == FALLBACK_BROKER_URL


def test_config_flag_and_env_pick_the_file(tmp_path: Path) -> None:
    a = write(tmp_path / "a.toml", 'app = "from_a"\n')
    b = write(tmp_path / "b.toml", 'app = "from_b"\n')
    env = {"CELERYCTL_CONFIG": str(b), "HOME": str(tmp_path)}
    assert load_settings(env=env, cwd=tmp_path).app == "from_b"
    assert load_settings(config=a, env=env, cwd=tmp_path).app == "from_a"


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config=tmp_path / "nope.toml", env={}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('app = "x"\nbroker_url = amqp://x\n', r"celeryctl.toml:2: invalid TOML"),
        ('app = "x"\n\nbrokr_url = "amqp://x//"\n', r"celeryctl.toml:3: unknown key 'brokr_url'"),
        ('app = "x"\nresult_backend = 5\n', r"celeryctl.toml:2: key 'result_backend' must be a string, got int"),
        ('broker_url = "http://x/"\n', r"scheme 'http'"),
    ],
    ids=["syntax", "unknown-key", "wrong-type", "bad-url"],
)
def test_broken_file_names_file_line_and_key(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path / "celeryctl.toml", text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_settings(env={}, cwd=tmp_path)
    assert str(tmp_path / "celeryctl.toml") in info.value.message


def test_save_writes_0600_and_keeps_other_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "celeryctl.toml", '# my comment\napp = "keep"\nbroker_url = "amqp://old//"\n', 0o644)
    save_settings(path, {"broker_url": 'amqp://u:p"w@h:1/v'})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "# my comment" in text and 'app = "keep"' in text
    s = load_settings(env={}, cwd=tmp_path)
    assert s.broker_url == 'amqp://u:p"w@h:1/v'
    assert s.app == "keep"


def test_readable_file_with_password_warns(tmp_path: Path) -> None:
    write(tmp_path / "celeryctl.toml", 'broker_url = "amqp://u:secret@h//"\n', 0o644)
    s = load_settings(env={}, cwd=tmp_path)
    assert any("can be read by other users" in w and "chmod 600" in w for w in s.warnings)
    assert all("secret" not in w for w in s.warnings)
    os.chmod(tmp_path / "celeryctl.toml", 0o600)
    assert load_settings(env={}, cwd=tmp_path).warnings == []


def test_mask_url() -> None:
    assert mask_url("amqp://celery:s3cret@host:5672/vh") == "amqp://celery:****@host:5672/vh"
    assert mask_url("amqp://guest@host//") == "amqp://guest@host//"
    assert mask_url("rpc://") == "rpc://"
