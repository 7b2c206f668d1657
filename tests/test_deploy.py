"""celeryctl deploy systemd | kubernetes: files a service manager takes unchanged, and no password
on any command line.

The files are generated once per module (two CLI runs); every command line found in them is then
run for real (a usage error, exit 2, would mean a command or option that does not exist), the
units go through ``systemd-analyze verify`` and the YAML through PyYAML.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from celeryctl.deploy import STOP_MARGIN
from celeryctl.deploy.systemd import exec_arg
from tests.conftest import CliResult


def systemd_analyze() -> str:
    """systemd's own checker; installed (systemd's package, nothing started) when missing, never skipped."""
    found = shutil.which("systemd-analyze")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "systemd"], check=True, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing and cannot be installed here: apt-get install systemd")
    return found


PASSWORD = "Sup3r-s3cret-deploy-pw"
GRACE = 7.5
PROGRAM = Path(sys.executable).absolute().parent / "celeryctl"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Made:
    root: Path
    env: dict[str, str]
    broker: str
    systemd: Path
    kubernetes: Path
    systemd_doc: dict  # type: ignore[type-arg]
    kube_doc: dict  # type: ignore[type-arg]

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 60) -> CliResult:
        argv = [sys.executable, "-m", "celeryctl", *args]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, cwd=cwd or self.root, timeout=timeout)
        return CliResult(proc.returncode, proc.stdout, proc.stderr, argv)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Made]:
    root = tmp_path_factory.mktemp("deploy")
    # a broker nobody listens on: the worker and probe broker must fail with 6, not 2
    broker = f"amqp://deployer:{PASSWORD}@127.0.0.1:{_closed_port()}/prod"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYCTL_")}
    env.update(CELERYCTL_DATA_DIR=str(root / "data"), CELERYCTL_BROKER_URL=broker, COLUMNS="200")
    m = Made(root, env, broker, root / "sd", root / "k8s", {}, {})
    common = ["-w", "2", "-A", "celeryctl.demo:app", "-Q", "celery,hi there", "--grace", str(GRACE), "--json"]
    user = __import__("pwd").getpwuid(os.getuid()).pw_name
    sd = m.run("deploy", "systemd", *common, "--user", user, "--output", str(m.systemd))
    assert sd.returncode == 0, sd.output
    m.systemd_doc = sd.json()
    k8s = m.run("deploy", "kubernetes", *common, "--image", "registry.example/app:1.0", "--output", str(m.kubernetes))
    assert k8s.returncode == 0, k8s.output
    m.kube_doc = k8s.json()
    for res in (sd, k8s):
        assert PASSWORD not in res.output and "Traceback" not in res.output
    yield m


def _unit(path: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file (sections merged: the keys we look at are unique)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def _exec_argv(line: str, health_dir: Path) -> list[str]:
    """An Exec*= line as the argv systemd would run for instance w1 (specifiers expanded)."""
    words = shlex.split(line.replace("%%", "\0"))
    host = socket.gethostname()
    subst = {"%i": "w1", "%H": host}
    argv = []
    for w in words:
        for k, v in subst.items():
            w = w.replace(k, v)
        argv.append(w.replace("\0", "%").replace("/run/celeryctl/", f"{health_dir}/"))
    return argv


def _k8s(made: Made) -> tuple[dict, dict]:  # type: ignore[type-arg]
    deployment = yaml.safe_load((made.kubernetes / "deployment.yaml").read_text())
    secret = yaml.safe_load((made.kubernetes / "secret.yaml").read_text())
    return deployment, secret


def _command_lines(made: Made) -> list[list[str]]:
    """Every command line in the files: ExecStartPre/ExecStart, the container's command, the probes."""
    unit = _unit(made.systemd / "celeryctl-worker@.service")
    lines = [_exec_argv(v, made.root / "run") for k in ("ExecStartPre", "ExecStart") for v in unit[k]]
    deployment, _ = _k8s(made)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    lines.append(container["command"] + container.get("args", []))
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        lines.append(container[probe]["exec"]["command"])
    return lines


def test_systemd_units_verify_and_say_how_to_stop(made: Made) -> None:
    files = {Path(f["path"]).name: f for f in made.systemd_doc["files"]}
    assert set(files) == {"celeryctl-worker@.service", "celeryctl-workers.target", "celeryctl.env"}
    assert files["celeryctl.env"]["mode"] == "0600" and files["celeryctl.env"]["secret"] is True
    assert stat.S_IMODE((made.systemd / "celeryctl.env").stat().st_mode) == 0o600
    assert f'CELERYCTL_BROKER_URL="{made.broker}"' in (made.systemd / "celeryctl.env").read_text()
    unit = _unit(made.systemd / "celeryctl-worker@.service")
    assert unit["KillMode"] == ["mixed"] and unit["KillSignal"] == ["SIGTERM"]
    assert unit["Restart"] == ["on-failure"] and unit["StartLimitIntervalSec"] == ["0"]
    assert unit["TimeoutStopSec"] == [str(8 + STOP_MARGIN)]
    assert unit["EnvironmentFile"] == ["/etc/celeryctl/celeryctl.env"]
    assert unit["RuntimeDirectory"] == ["celeryctl/%i"]
    assert unit["ExecStart"][0].startswith(f"{PROGRAM} worker ")
    assert "-n %i@%H --health-file /run/celeryctl/%i/health.json --grace 7.5" in unit["ExecStart"][0]
    assert _unit(made.systemd / "celeryctl-workers.target")["Wants"] == [
        "celeryctl-worker@w1.service celeryctl-worker@w2.service"
    ]
    assert any("systemctl enable --now celeryctl-workers.target" in s for s in made.systemd_doc["next"])

    analyze = systemd_analyze()
    proc = subprocess.run(
        [
            analyze,
            "verify",
            "--man=no",
            str(made.systemd / "celeryctl-worker@w1.service"),
            str(made.systemd / "celeryctl-workers.target"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{made.systemd}:"},  # trailing ':' keeps the usual paths
    )
    # verify only warns about unknown keys and bad values: any line about our files is a failure
    assert proc.returncode == 0 and str(made.systemd) not in proc.stderr, proc.stderr


def test_kubernetes_yaml_is_a_deployment_with_probes_grace_and_secret(made: Made) -> None:
    deployment, secret = _k8s(made)
    assert deployment["kind"] == "Deployment" and deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 8 + STOP_MARGIN
    (container,) = pod["containers"]
    assert container["command"][:2] == ["celeryctl", "worker"]  # exec form: the worker gets SIGTERM
    health = container["command"][container["command"].index("--health-file") + 1]
    live = container["livenessProbe"]["exec"]["command"]
    ready = container["readinessProbe"]["exec"]["command"]
    assert live[:5] == ["celeryctl", "probe", "worker", "--file", health] and "--ready" not in live
    assert ready[:5] == live[:5] and "--ready" in ready
    mounts = {v["mountPath"]: v["name"] for v in container["volumeMounts"]}
    (mount,) = [m for m in mounts if Path(health).is_relative_to(m)]
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[mounts[mount]]
    env = {e["name"]: e for e in container["env"]}
    ref = env["CELERYCTL_BROKER_URL"]["valueFrom"]["secretKeyRef"]
    assert secret["kind"] == "Secret" and ref["name"] == secret["metadata"]["name"]
    assert secret["stringData"][ref["key"]] == made.broker
    assert stat.S_IMODE((made.kubernetes / "secret.yaml").stat().st_mode) == 0o600
    assert [f["mode"] for f in made.kube_doc["files"]] == ["0644", "0600"]


def test_every_command_line_exists_and_holds_no_password(made: Made) -> None:
    lines = _command_lines(made)
    assert len(lines) == 6
    for argv in lines:
        assert not any(PASSWORD in word for word in argv), argv
    assert PASSWORD not in (made.systemd / "celeryctl-worker@.service").read_text()
    assert PASSWORD not in (made.kubernetes / "deployment.yaml").read_text()
    (made.root / "run" / "w1").mkdir(parents=True)
    seen: set[tuple[str, ...]] = set()
    for argv in lines:
        args = tuple(argv[1:])
        if args in seen:  # the startup and liveness probes are the same command
            continue
        seen.add(args)
        program = argv[0] if argv[0].startswith("/") else str(PROGRAM)
        assert Path(program).is_file()
        proc = subprocess.run([program, *args], capture_output=True, text=True, env=made.env, cwd=made.root, timeout=60)
        out = proc.stdout + proc.stderr
        # no worker record yet: the probe says so (1); nobody listens on the broker's port (6)
        expected = 1 if args[:2] == ("probe", "worker") else 6
        assert proc.returncode == expected and "Traceback" not in out, (argv, out)


def test_dry_run_masks_and_writes_nothing(made: Made) -> None:
    out = made.root / "dry"
    res = made.run("deploy", "systemd", "--dry-run", "--output", str(out))
    assert res.returncode == 0, res.output
    assert 'CELERYCTL_BROKER_URL="amqp://deployer:****@' in res.stdout and PASSWORD not in res.output
    assert "ExecStart=" in res.stdout and not out.exists()
    res = made.run("deploy", "kubernetes", "--image", "app:1", "--dry-run", "--json", "--output", str(out))
    assert res.returncode == 0 and PASSWORD not in res.output and not out.exists()
    assert res.json()["dry_run"] is True and not any(f["written"] for f in res.json()["files"])


def test_existing_files_need_force(made: Made) -> None:
    before = {p.name: p.read_bytes() for p in made.systemd.iterdir()}
    res = made.run("deploy", "systemd", "-w", "3", "--output", str(made.systemd))
    assert res.returncode == 11 and "Traceback" not in res.output
    assert "already exists" in res.stderr and "--force" in res.stderr and "celeryctl-worker@.service" in res.stderr
    assert {p.name: p.read_bytes() for p in made.systemd.iterdir()} == before
    res = made.run("deploy", "systemd", "-w", "3", "--force", "--json", "--output", str(made.systemd))
    assert res.returncode == 0, res.output
    assert all(f["replaced"] for f in res.json()["files"])
    assert "celeryctl-worker@w3.service" in (made.systemd / "celeryctl-workers.target").read_text()
    assert stat.S_IMODE((made.systemd / "celeryctl.env").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["systemd", "-w", "0"], "--workers"),
        (["systemd", "-Q", "q" * 256], "256 bytes"),
        (["systemd", "--user", "no body"], "not a valid user"),
        (["kubernetes"], "--image is required"),
        (["kubernetes", "--image", "a:1", "--name", "Bad_Name"], "not a valid Kubernetes name"),
    ],
)
def test_bad_input_is_one_line_exit_2(made: Made, args: list[str], needle: str) -> None:
    res = made.run("deploy", *args, "--dry-run")
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.output, res.output


def test_exec_arg_keeps_values_literal() -> None:
    assert exec_arg("celery") == "celery"
    assert exec_arg("50%$x") == '"50%%$$x"'
    assert exec_arg('a b"\\') == '"a b\\"\\\\"'
    assert json.loads(exec_arg("tab\there")) == "tab\there"  # C escapes, as JSON reads them


def test_output_to_the_unit_directory_installs_in_place() -> None:
    from celeryctl.deploy import systemd as units

    spec = units.SystemdSpec(
        program=PROGRAM, environment={"CELERYCTL_BROKER_URL": "amqp://u:pw@h//"}, output=units.UNIT_DIR
    )
    plan = units.plan(spec)
    assert [str(f.path) for f in plan.files] == [
        "/etc/systemd/system/celeryctl-worker@.service",
        "/etc/systemd/system/celeryctl-workers.target",
        "/etc/celeryctl/celeryctl.env",
    ]
    assert not [step for step in plan.next_steps if "install " in step]  # nothing to copy
    assert plan.files[2].masked is not None and "pw" not in plan.files[2].masked
