"""Layered settings: command-line flag > ``CELERYCTL_*`` environment > ``celeryctl.toml`` > default.

The settings file is flat TOML::

    broker_url = "amqp://celery:...@127.0.0.1:5672/celery"
    result_backend = "rpc://"
    app = "test_celery"

``broker_url`` may also be an array of URLs (a cluster's nodes, tried in turn: Celery's failover
list, the same as ``"amqp://h1;amqp://h2"``).  It is looked up as ``--config`` / ``CELERYCTL_CONFIG``, else ``./celeryctl.toml``.  A file that
holds a password is written with mode 0600; reading one that others can read warns.
Every value remembers where it came from (``Settings.sources``) so that ``doctor -v`` can say.
"""

from __future__ import annotations

import os
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celeryctl.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from celeryctl.broker import BrokerUrl
    from celeryctl.rabbitmq.cluster import Cluster
    from celeryctl.rabbitmq.node import Node

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG_FILENAME = "celeryctl.toml"
CONFIG_ENV = "CELERYCTL_CONFIG"
FALLBACK_BROKER_URL = "amqp://guest:guest@localhost:5672//"
DEFAULT_BACKEND = "rpc://"


@dataclass(frozen=True)
class Key:
    name: str
    env: str
    flag: str
    help: str
    type: type = str
    secret: bool = False  # shown as **** (broker URLs are masked instead)


KEYS: dict[str, Key] = {
    k.name: k
    for k in (
        Key("broker_url", "CELERYCTL_BROKER_URL", "--broker", "AMQP URL of the broker"),
        Key(
            "management_url",
            "CELERYCTL_MANAGEMENT_URL",
            "--api",
            "the broker's management HTTP API, http(s)://[USER[:PASSWORD]@]HOST:15672/",
        ),
        Key("result_backend", "CELERYCTL_RESULT_BACKEND", "--backend", "Celery result backend URL"),
        Key("app", "CELERYCTL_APP", "-A/--app", "Celery app, MODULE[:ATTRIBUTE]"),
        Key("data_dir", "CELERYCTL_DATA_DIR", "--data-dir", "where celeryctl keeps its node", Path),
        Key("node", "CELERYCTL_NODE", "--node", "RabbitMQ node name for rabbitmqctl"),
        Key(
            "rabbitmq_bin_dir",
            "CELERYCTL_RABBITMQ_BIN_DIR",
            "(none)",
            "directory of rabbitmq-server and rabbitmqctl (default: found on PATH)",
            Path,
        ),
        Key(
            "queue_type",
            "CELERYCTL_QUEUE_TYPE",
            "--queue-type",
            "quorum (delivery limit, dead letters) or classic, for the queues celeryctl declares",
        ),
        Key(
            "max_deliveries",
            "CELERYCTL_MAX_DELIVERIES",
            "--max-deliveries",
            "deliveries of a task before it is dead-lettered (quorum queues)",
            int,
        ),
        Key("doctor_timeout", "CELERYCTL_DOCTOR_TIMEOUT", "doctor --timeout", "doctor's network timeout, s", float),
        Key("ping_timeout", "CELERYCTL_PING_TIMEOUT", "doctor --ping-timeout", "doctor's worker ping, s", float),
        Key(
            "flower_basic_auth",
            "CELERYCTL_FLOWER_BASIC_AUTH",
            "flower --basic-auth",
            "USER:PASSWORD for Flower",
            secret=True,
        ),
    )
}
DEFAULTS: dict[str, Any] = {"doctor_timeout": 2.0, "ping_timeout": 1.0, "queue_type": "quorum", "max_deliveries": 5}


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "share")
    return Path(base) / "celeryctl"


@dataclass
class Settings:
    broker_url: str | None = None
    management_url: str | None = None
    result_backend: str = DEFAULT_BACKEND
    app: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    node: str | None = None
    rabbitmq_bin_dir: Path | None = None
    doctor_timeout: float = DEFAULTS["doctor_timeout"]
    ping_timeout: float = DEFAULTS["ping_timeout"]
    queue_type: str = DEFAULTS["queue_type"]
    max_deliveries: int = DEFAULTS["max_deliveries"]
    flower_basic_auth: str | None = None
    config_file: Path | None = None
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def broker(self) -> str:
        """The broker URL to use: explicit, else celeryctl's running node, else localhost:5672."""
        if self.broker_url:
            return self.broker_url
        cluster = self.local_cluster()
        if any(node.running_info() is not None for node in cluster.members):
            self.sources.setdefault("broker_url", "celeryctl node")
            return cluster.url() or FALLBACK_BROKER_URL  # a cluster: every member, Celery's failover list
        self.sources.setdefault("broker_url", "default")
        return FALLBACK_BROKER_URL

    @property
    def broker_target(self) -> BrokerUrl:
        """:attr:`broker`, parsed (it was validated when the settings were loaded)."""
        from celeryctl.broker import BrokerUrl

        return BrokerUrl.parse(self.broker, self.sources.get("broker_url", ""))

    def bin_dir(self) -> Path | None:
        """RabbitMQ's scripts: the ``rabbitmq_bin_dir`` setting when set (None if it lacks them), else found."""
        from celeryctl.rabbitmq.ctl import BIN_DIR_ENV, find_bin_dir

        return find_bin_dir({BIN_DIR_ENV: str(self.rabbitmq_bin_dir)} if self.rabbitmq_bin_dir else None)

    def local_node(self) -> Node:
        """celeryctl's private node (running or not) under the data directory."""
        from celeryctl.rabbitmq.node import Node  # local: keeps settings import light

        return Node(self.data_dir / "node", bin_dir=self.rabbitmq_bin_dir)

    def local_cluster(self) -> Cluster:
        """celeryctl's node, or the members of its local cluster (``broker start --nodes N``)."""
        from celeryctl.rabbitmq.cluster import Cluster

        return Cluster(self.data_dir, bin_dir=self.rabbitmq_bin_dir)

    def to_dict(self, *, reveal: bool = False) -> dict[str, Any]:
        from celeryctl.broker import mask_url

        broker = self.broker
        return {
            "broker_url": broker if reveal else mask_url(broker),
            "management_url": (
                (self.management_url if reveal else mask_url(self.management_url)) if self.management_url else None
            ),
            "result_backend": self.result_backend if reveal else mask_url(self.result_backend),
            "app": self.app,
            "data_dir": str(self.data_dir),
            "node": self.node,
            "rabbitmq_bin_dir": str(self.rabbitmq_bin_dir) if self.rabbitmq_bin_dir else None,
            "doctor_timeout": self.doctor_timeout,
            "ping_timeout": self.ping_timeout,
            "queue_type": self.queue_type,
            "max_deliveries": self.max_deliveries,
            "flower_basic_auth": (self.flower_basic_auth if reveal else "****") if self.flower_basic_auth else None,
            "config_file": str(self.config_file) if self.config_file else None,
            "sources": dict(self.sources),
        }


def find_config_file(
    explicit: str | os.PathLike[str] | None, env: Mapping[str, str], cwd: Path
) -> tuple[Path | None, bool]:
    """Return (path, must_exist)."""
    if explicit:
        return Path(explicit), True
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]), True
    candidate = cwd / CONFIG_FILENAME
    return (candidate if candidate.exists() else None), False


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^[ \t]*[\"']?{re.escape(key)}[\"']?[ \t]*=", re.MULTILINE)
    m = pattern.search(text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def read_config_file(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Parse and validate a settings file; return (values, warnings)."""
    from celeryctl.broker import url_password

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"settings file {path} does not exist",
            f"create it, or unset {CONFIG_ENV} / drop --config",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"at line (\d+)", str(exc))
        at_line = int(m.group(1)) if m else text.count("\n") + 1
        raise ConfigError(
            f"{path}:{at_line}: invalid TOML: {exc}",
            'fix the syntax; values are quoted strings, e.g. broker_url = "amqp://..."',
        ) from None
    values: dict[str, Any] = {}
    for key, value in data.items():
        line = _line_of(text, key)
        where = f"{path}:{line}" if line else str(path)
        if key not in KEYS:
            raise ConfigError(
                f"{where}: unknown key '{key}'",
                f"known keys: {', '.join(KEYS)}",
                details={"file": str(path), "line": line, "key": key},
            )
        if KEYS[key].type is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = float(value)
            continue
        if key == "broker_url" and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            values[key] = ";".join(value)  # a failover list, as Celery's ";"-separated URL
            continue
        if key == "broker_url" and isinstance(value, list):
            raise ConfigError(
                f"{where}: key 'broker_url' must be a URL or a non-empty array of URLs (strings)",
                'for a cluster: broker_url = ["amqp://USER:PASSWORD@h1:5672/VHOST", "amqp://USER:PASSWORD@h2:5672/VHOST"]',
                details={"file": str(path), "line": line, "key": key},
            )
        if not isinstance(value, str):
            raise ConfigError(
                f"{where}: key '{key}' must be a string, got {type(value).__name__}",
                f'write it quoted: {key} = "..."',
                details={"file": str(path), "line": line, "key": key},
            )
        values[key] = value
    warnings: list[str] = []
    holds_secret = any(url_password(v) for k, v in values.items() if k in ("broker_url", "management_url", "result_backend"))
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0
    if holds_secret and mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"{path} holds a password and can be read by other users "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )
    return values, warnings


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    config: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Resolve settings: flag > CELERYCTL_* env > settings file > default."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    flags = {k: v for k, v in (flags or {}).items() if v is not None and v != ""}
    unknown = set(flags) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown settings keys: {sorted(unknown)}")
    path, _ = find_config_file(config, env, cwd)
    file_values: dict[str, Any] = {}
    warnings: list[str] = []
    if path is not None:
        file_values, warnings = read_config_file(path)
    settings = Settings(config_file=path, warnings=warnings, data_dir=default_data_dir(env))
    settings.sources = {"result_backend": "default", "data_dir": "default", **dict.fromkeys(DEFAULTS, "default")}
    for name, key in KEYS.items():
        if name in flags:
            value, source = flags[name], f"flag {key.flag}"
        elif env.get(key.env):
            value, source = env[key.env], f"env {key.env}"
        elif name in file_values:
            value, source = file_values[name], f"file {path}"
        else:
            continue
        setattr(settings, name, _convert(key, value, source))
        settings.sources[name] = source
    if settings.broker_url is not None:
        from celeryctl.broker import BrokerUrl  # here: a probe that reads no URL does not pay for the parser

        BrokerUrl.parse(settings.broker_url, settings.sources["broker_url"])  # ConfigError when it is not AMQP
    if settings.management_url is not None:
        _check_management_url(settings.management_url, settings.sources["management_url"])
    if settings.node is not None:
        _check_node(settings.node, settings.sources["node"])
    return settings


def _check_management_url(value: str, source: str) -> None:
    """It parses as an http(s) URL (exit 3); given as a flag, it carries no password (exit 2)."""
    from celeryctl.broker import ManagementUrl

    url = ManagementUrl.parse(value, source)
    if url.password is not None and source.startswith("flag"):
        raise UsageError(
            "--api: the URL holds a password, and a command line is readable by every user of this machine",
            "give the user only (--api http://admin@HOST:15672/) and pipe the password with --api-password-stdin, "
            "or put the whole URL in CELERYCTL_MANAGEMENT_URL or the settings file (mode 0600)",
        )


def _check_node(node: str, source: str) -> None:
    """A node name from a flag is a usage error (exit 2), from the environment or a file a config error (3)."""
    from celeryctl.errors import UsageError
    from celeryctl.rabbitmq.ctl import check_node_name

    kind, _, where = source.partition(" ")
    try:
        check_node_name(node, where if kind in ("flag", "env") else f"node in {where}")
    except UsageError as exc:
        if source.startswith("flag"):
            raise
        raise ConfigError(exc.message, exc.hint, details={"key": "node", "source": source}) from None


def _convert(key: Key, value: Any, source: str) -> Any:
    if key.name in ("queue_type", "max_deliveries"):
        return _convert_queue_setting(key, value, source)
    if key.type is Path:
        return Path(value).expanduser()
    if key.type is float:
        from celeryctl import validate
        from celeryctl.errors import UsageError

        try:
            return validate.seconds(value, f"{key.name} (from {source})", allow_zero=False)
        except UsageError as exc:
            example = f"{key.name} = 2.5" if source.startswith("file") else f"{key.env}=2.5"
            raise ConfigError(exc.message, f"for example {example}", details={"key": key.name}) from None
    return value


def _convert_queue_setting(key: Key, value: Any, source: str) -> Any:
    """``queue_type`` / ``max_deliveries``: checked by :mod:`celeryctl.topology` (exit 2 from a flag, else 3)."""
    from celeryctl import topology
    from celeryctl.errors import UsageError

    what = key.flag if source.startswith("flag") else f"{key.name} (from {source})"
    try:
        if key.name == "queue_type":
            return topology.check_queue_type(value, what)
        return topology.check_max_deliveries(value, what)
    except UsageError as exc:
        if source.startswith("flag"):
            raise
        example = {"queue_type": '"quorum"', "max_deliveries": "5"}[key.name]
        hint = f"for example {key.name} = {example}" if source.startswith("file") else f"for example {key.env}={example.strip(chr(34))}"
        raise ConfigError(exc.message, hint, details={"key": key.name}) from None


def _toml_string(value: str) -> str:
    # A JSON string with ASCII escapes is a valid TOML basic string.
    import json

    return json.dumps(value, ensure_ascii=True)


_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_KEY_LINE = re.compile(rf"^[ \t]*({_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})*)[ \t]*=(.*)$")
_TABLE_LINE = re.compile(r"^[ \t]*\[")


def _key_name(key_part: str) -> str | None:
    """The name a (possibly quoted) key stands for; None for a dotted key (not a top-level one)."""
    try:
        parsed = tomllib.loads(f"{key_part} = 0")
    except tomllib.TOMLDecodeError:
        return None
    (name, value), *_ = parsed.items()
    return name if isinstance(value, int) else None


def _opens_multiline(value: str) -> str | None:
    """The delimiter of a multi-line string that ``value`` opens and does not close, if any."""
    value = value.strip()
    for quote in ('"""', "'''"):
        if value.startswith(quote) and value.count(quote) % 2 == 1:
            return quote
    return None


def _rewrite(text: str, updates: Mapping[str, str]) -> str:
    """``text`` with each top-level key of ``updates`` set once, however it was written.

    A key is found bare or quoted, with any spacing; its line (and the rest of a multi-line
    string value) is replaced.  Keys the file lacks go after its last top-level key, before
    the first ``[table]``, so they stay top-level.
    """
    lines = text.splitlines()
    out: list[str] = []
    pending = dict(updates)
    insert_at: int | None = None  # where new keys go: after the last top-level key line
    in_table = False
    closing: str | None = None  # inside a multi-line string value: its delimiter
    skipping = False  # the multi-line value being skipped is one we replaced
    for line in lines:
        if closing is not None:
            if line.count(closing) % 2 == 1:
                closing = None
            if not skipping:
                out.append(line)
                if not in_table:
                    insert_at = len(out)
            continue
        skipping = False
        if _TABLE_LINE.match(line):
            in_table = True
            out.append(line)
            continue
        m = _KEY_LINE.match(line)
        if m is None:
            out.append(line)
            continue
        closing = _opens_multiline(m.group(2))
        name = _key_name(m.group(1)) if not in_table else None
        if name is not None and name in updates:
            if name in pending:
                out.append(f"{name} = {_toml_string(pending.pop(name))}")
            skipping = closing is not None
        else:
            out.append(line)
        if not in_table:
            insert_at = len(out)
    new = [f"{k} = {_toml_string(v)}" for k, v in pending.items()]
    if insert_at is None:
        first_table = next((i for i, line in enumerate(out) if _TABLE_LINE.match(line)), None) if in_table else None
        insert_at = len(out) if first_table is None else first_table
    out[insert_at:insert_at] = new
    return "\n".join(out) + "\n"


def save_settings(path: Path, updates: Mapping[str, str]) -> Path:
    """Set keys in a settings file, keeping its other lines; the file ends up mode 0600.

    The file is replaced atomically (:func:`celeryctl.files.write_file`: never through a
    symbolic link), and only when the result parses with every key once and as given.
    """
    from celeryctl.files import refuse_symlink, write_file

    for key in updates:
        if key not in KEYS:
            raise ValueError(f"unknown settings key {key!r}")
    refuse_symlink(path)
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc}", "fix or remove the file") from None
    try:
        before = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"cannot update settings file {path}: it is not valid TOML ({exc})", "fix the syntax, then run again"
        ) from None
    new_text = _rewrite(text, updates)
    try:
        after = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError:
        after = None
    if after != {**before, **updates}:
        raise ConfigError(
            f"cannot update settings file {path} safely: its layout is unusual",
            'write it as flat TOML (one key = "value" per line), then run again',
            details={"file": str(path), "keys": sorted(updates)},
        )
    write_file(path, new_text)
    return path
