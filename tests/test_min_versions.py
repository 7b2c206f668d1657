"""The lowest declared dependency versions really work.

A second virtualenv gets celeryctl and exactly the floors ``pyproject.toml`` declares for
typer, rich, celery, kombu, pika and click (read from the file, not repeated here); that
environment's ``celeryctl`` then provisions a user and vhost on the session's node, runs a worker,
submits a task and waits for its result, and runs ``doctor`` and ``status``.  pip's cache is
reused, so after the first run this is mostly pip resolving (about a minute).  PyPI unreachable
(and the versions not cached): the test fails, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO, RabbitNode, VhostFactory, Worker

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

# The packages whose floor is pinned exactly in the second environment.
FLOOR_PACKAGES = ("typer", "rich", "celery", "kombu", "pika", "click")


def declared_floors(pyproject: Path = REPO / "pyproject.toml") -> dict[str, str]:
    """``{package: lowest version}`` from the ``>=`` bounds of ``[project] dependencies``."""
    floors: dict[str, str] = {}
    for spec in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate():
            continue
        for bound in req.specifier:
            if bound.operator == ">=":
                floors[req.name.lower()] = bound.version
    return floors


def test_every_floor_package_is_declared_with_a_lower_bound() -> None:
    floors = declared_floors()
    assert sorted(set(FLOOR_PACKAGES) - set(floors)) == []


@dataclass
class FloorEnv:
    python: Path
    celeryctl: Path
    pins: list[str]

    def versions(self) -> dict[str, str]:
        code = "import importlib.metadata as m, json, sys; print(json.dumps({p: m.version(p) for p in sys.argv[1:]}))"
        proc = subprocess.run(
            [str(self.python), "-c", code, *FLOOR_PACKAGES], capture_output=True, text=True, check=True
        )
        return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def floor_env(tmp_path_factory: pytest.TempPathFactory) -> FloorEnv:
    """A virtualenv with celeryctl installed (from a copy of this checkout) and the floors pinned."""
    root = tmp_path_factory.mktemp("min-versions")
    source = root / "src"  # a copy: building in the checkout would leave build/ in it
    source.mkdir()
    shutil.copytree(REPO / "celeryctl", source / "celeryctl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    pins = [f"{name}=={version}" for name, version in sorted(declared_floors().items()) if name in FLOOR_PACKAGES]
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_NO_CACHE_DIR", "PIP_REQUIRE_VIRTUALENV")}
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source), *pins],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    if proc.returncode != 0:
        network = re.search(r"(?i)(connection|network|resolve|Max retries|No matching distribution)", proc.stderr)
        pytest.fail(
            f"pip could not install celeryctl with the declared floors {pins} "
            f"({'is PyPI reachable? ' if network else ''}exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return FloorEnv(python, venv / "bin" / "celeryctl", pins)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout[-2000:]}\n--- stderr\n{self.stderr[-2000:]}"


@pytest.fixture
def floor_cli(
    floor_env: FloorEnv, rabbit: RabbitNode, tmp_path: Path
) -> Iterator[tuple[FloorEnv, Path, dict[str, str]]]:
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERYCTL_", "CELERY_", "VIRTUAL_ENV"))}
    # celeryctl's node in this data dir is the session's node: setup-broker provisions it.
    env.update(CELERYCTL_DATA_DIR=str(rabbit.data_dir), COLUMNS="200", PYTHONUNBUFFERED="1")
    yield floor_env, workdir, env


def run(floor_env: FloorEnv, workdir: Path, env: dict[str, str], *args: str, timeout: float = 120) -> Run:
    proc = subprocess.run(
        [str(floor_env.celeryctl), *args], capture_output=True, text=True, env=env, cwd=workdir, timeout=timeout
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def test_the_floors_are_what_is_installed(floor_env: FloorEnv) -> None:
    assert floor_env.versions() == {p: v for p, v in declared_floors().items() if p in FLOOR_PACKAGES}


def test_parser_options_work_with_the_lowest_typer(floor_env: FloorEnv) -> None:
    """``typer.Option(parser=...)`` with ``float | None`` / ``int | None``, as celeryctl's options use it."""
    script = str(REPO / "tests" / "smoke" / "parser_app.py")

    def check(*args: str) -> Run:
        proc = subprocess.run([str(floor_env.python), script, *args], capture_output=True, text=True, timeout=60)
        return Run(proc.returncode, proc.stdout, proc.stderr)

    good = check("--timeout", "2.5", "--port", "5672", "--queue", "q1")
    assert (good.returncode, good.stdout) == (0, "timeout=2.5 port=5672 queues=['q1']\n"), good
    none = check()
    assert (none.returncode, none.stdout) == (0, "timeout=None port=None queues=[]\n"), none
    for args in (("--timeout", "nan"), ("--port", "65536"), ("--queue", "")):
        bad = check(*args)
        assert bad.returncode == 2, (args, str(bad))
        assert "Traceback" not in bad.stderr, (args, str(bad))


def test_smoke_with_the_lowest_declared_versions(
    floor_cli: tuple[FloorEnv, Path, dict[str, str]], make_vhost: VhostFactory, rabbit: RabbitNode
) -> None:
    floor_env, workdir, env = floor_cli
    cli = lambda *args, timeout=120: run(floor_env, workdir, env, *args, timeout=timeout)  # noqa: E731

    helped = cli("--help")
    assert helped.returncode == 0 and "setup-broker" in helped.stdout, helped
    helped = cli("submit", "--help")
    assert helped.returncode == 0 and "--timeout" in helped.stdout, helped

    # Settings round trip: setup-broker saves the URL to ./celeryctl.toml; later commands need no flag.
    user, vhost = f"minv-{uuid.uuid4().hex[:8]}", f"minv-{uuid.uuid4().hex[:8]}"
    make_vhost.users.append(user)  # deleted with the module's vhosts
    make_vhost.vhosts.append(vhost)
    setup = cli("setup-broker", "--user", user, "--vhost", vhost, "--port", str(rabbit.port), "--json")
    assert setup.returncode == 0, setup
    doc = json.loads(setup.stdout)
    assert doc["ok"] is True and doc["saved_to"] == str(workdir / "celeryctl.toml"), setup
    assert f"@127.0.0.1:{rabbit.port}/{vhost}" in (workdir / "celeryctl.toml").read_text()
    doctor_v = cli("doctor", "-v", "--json", "--ping-timeout", "0.5")
    checks = {c["name"]: c for c in json.loads(doctor_v.stdout)["checks"]}
    assert checks["settings"]["status"] == "ok", doctor_v
    assert checks["auth"]["status"] == "ok", doctor_v

    # A real worker from that environment, reading the same settings file.
    url = tomllib.loads((workdir / "celeryctl.toml").read_text())["broker_url"]
    worker = Worker(("celeryctl", "worker"), url, workdir / "worker.log", "-c", "1", cwd=workdir)
    worker.argv[0] = str(floor_env.python)
    worker.env = {**env}
    try:
        worker.start(timeout=90)
        submitted = cli("submit", "add", "1", "2", "--wait", "--timeout", "60")
        assert (submitted.returncode, submitted.stdout) == (0, "3\n"), submitted
        assert "Traceback" not in submitted.stderr, submitted

        doctor = cli("doctor")
        assert doctor.returncode == 0, doctor
        status = cli("status", "--json", "--timeout", "2")
        assert status.returncode == 0, status
        names = [w["name"] for w in json.loads(status.stdout)["workers"]]
        assert worker.name in names, status
    finally:
        assert worker.stop() == 0, worker.output
