"""``celeryctl deploy kubernetes``: a Deployment of workers and the Secret holding the broker URL.

* ``deployment.yaml``: the container runs ``celeryctl worker`` in exec form (no shell), so the
  worker is the container's first process and gets the kubelet's SIGTERM itself;
  ``terminationGracePeriodSeconds`` is ``--grace`` plus a margin to re-queue what is left.  The
  worker writes its health record on an ``emptyDir`` (``--health-file``); a startup probe waits for
  the first record, the liveness probe (``celeryctl probe worker --file F --max-age S``) restarts a
  worker whose event loop stopped, the readiness probe (``... --ready``) says whether it consumes.
  The broker URL comes from the Secret through ``secretKeyRef``: never on a command line.
* ``secret.yaml``: the Secret (``stringData``), mode 0600; apply it, then keep it out of git.

The YAML is written as text (the runtime needs no PyYAML): every string is a JSON string, which
YAML reads as a double-quoted scalar.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from celeryctl.deploy import PRIVATE_FILE, DeployFile, DeployPlan, masked_value, seconds_text, stop_timeout
from celeryctl.errors import UsageError
from celeryctl.worker_steps import DEFAULT_GRACE

DEFAULT_OUTPUT = Path("deploy/kubernetes")
DEFAULT_NAME = "celeryctl-worker"
DEPLOYMENT_NAME = "deployment.yaml"
SECRET_NAME = "secret.yaml"
HEALTH_DIR = "/run/celeryctl"
# in a directory of its own that the worker creates (as the container's user) inside the emptyDir
HEALTH_FILE = f"{HEALTH_DIR}/health/worker.json"
DATA_DIR = f"{HEALTH_DIR}/data"
MAX_AGE = 10  # liveness: the record must be this fresh (the worker writes it about every second)
MAX_REPLICAS = 1000
# Settings that may hold a password go in the Secret (key: the setting's name with '-').
SECRET_KEYS = ("CELERYCTL_BROKER_URL", "CELERYCTL_RESULT_BACKEND")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class KubernetesSpec:
    """What ``celeryctl deploy kubernetes`` was asked for, settings already resolved."""

    image: str | None
    environment: dict[str, str]  # CELERYCTL_* the worker needs (the broker URL first)
    output: Path = DEFAULT_OUTPUT
    replicas: int = 1
    app: str | None = None
    queues: str | None = None
    name: str = DEFAULT_NAME
    namespace: str | None = None
    grace: float = DEFAULT_GRACE


def y(value: object) -> str:
    """A YAML scalar: strings as JSON strings (a valid double-quoted YAML scalar), numbers as they are."""
    return json.dumps(value, ensure_ascii=False)


def check_name(value: str, what: str, *, limit: int = 63) -> str:
    """A Kubernetes object name usable as a label value too: a DNS-1123 label."""
    if len(value) > limit or not _DNS_LABEL.match(value):
        raise UsageError(
            f"{what} {value!r} is not a valid Kubernetes name",
            f"use lowercase letters, digits and '-', starting and ending with a letter or digit, at most {limit}",
        )
    return value


def check_spec(spec: KubernetesSpec) -> str:
    """Check the flags; return the image."""
    if not spec.image:
        raise UsageError(
            "--image is required: the container image that has celeryctl and your app installed",
            "for example --image registry.example.com/myapp:1.4.2",
        )
    if any(ch.isspace() for ch in spec.image) or any(ord(ch) < 0x20 for ch in spec.image):
        raise UsageError(
            f"--image {spec.image!r} holds a space or a control character", "name one image, e.g. myapp:1.4.2"
        )
    if not 1 <= spec.replicas <= MAX_REPLICAS:
        raise UsageError(f"--workers must be from 1 to {MAX_REPLICAS}, got {spec.replicas}")
    check_name(spec.name, "--name", limit=63 - len("-secret"))
    if spec.namespace is not None:
        check_name(spec.namespace, "--namespace")
    return spec.image


def secret_name(spec: KubernetesSpec) -> str:
    return f"{spec.name}-secret"


def secret_key(env: str) -> str:
    return env.removeprefix("CELERYCTL_").lower().replace("_", "-")


def worker_command(spec: KubernetesSpec) -> list[str]:
    argv = ["celeryctl", "worker"]
    if spec.app:
        argv += ["-A", spec.app]
    if spec.queues:
        argv += ["-Q", spec.queues]
    return [*argv, "--health-file", HEALTH_FILE, "--grace", seconds_text(spec.grace)]


def probe_command(*, ready: bool) -> list[str]:
    argv = ["celeryctl", "probe", "worker", "--file", HEALTH_FILE, "--max-age", str(MAX_AGE)]
    return [*argv, "--ready"] if ready else argv


def _flow(items: list[str]) -> str:
    return "[" + ", ".join(y(i) for i in items) + "]"


def _metadata(spec: KubernetesSpec, name: str, indent: str = "") -> list[str]:
    lines = [f"{indent}metadata:", f"{indent}  name: {y(name)}"]
    if spec.namespace:
        lines.append(f"{indent}  namespace: {y(spec.namespace)}")
    lines += [f"{indent}  labels:", *_labels(spec, indent + "    ")]
    return lines


def _labels(spec: KubernetesSpec, indent: str) -> list[str]:
    return [f"{indent}app.kubernetes.io/name: {y(spec.name)}", f'{indent}app.kubernetes.io/component: "worker"']


def _env(spec: KubernetesSpec) -> list[str]:
    lines = ["        env:"]
    for key, value in spec.environment.items():
        lines.append(f"        - name: {y(key)}")
        if key in SECRET_KEYS:
            lines += [
                "          valueFrom:",
                "            secretKeyRef:",
                f"              name: {y(secret_name(spec))}",
                f"              key: {y(secret_key(key))}",
            ]
        else:
            lines.append(f"          value: {y(value)}")
    lines += [
        '        - name: "CELERYCTL_DATA_DIR"',
        f"          value: {y(DATA_DIR)}",
        '        - name: "PYTHONUNBUFFERED"',
        '          value: "1"',
    ]
    return lines


def deployment(spec: KubernetesSpec) -> str:
    image = check_spec(spec)
    lines = [
        "# The celeryctl workers: written by `celeryctl deploy kubernetes`.",
        "# The worker is the container's first process (exec form, no shell): the kubelet's SIGTERM",
        f"# reaches it, the running tasks get --grace ({seconds_text(spec.grace)} s) and what is left is re-queued",
        "# before terminationGracePeriodSeconds runs out. The broker URL comes from the Secret.",
        "apiVersion: apps/v1",
        "kind: Deployment",
        *_metadata(spec, spec.name),
        "spec:",
        f"  replicas: {spec.replicas}",
        "  selector:",
        "    matchLabels:",
        *_labels(spec, "      "),
        "  template:",
        "    metadata:",
        "      labels:",
        *_labels(spec, "        "),
        "    spec:",
        f"      terminationGracePeriodSeconds: {stop_timeout(spec.grace)}",
        "      containers:",
        '      - name: "worker"',
        f"        image: {y(image)}",
        f"        command: {_flow(worker_command(spec))}",
        *_env(spec),
        "        volumeMounts:",
        '        - name: "health"',
        f"          mountPath: {y(HEALTH_DIR)}",
        "        # until the first health record: up to 2 minutes to import the app and reach the broker",
        "        startupProbe:",
        "          exec:",
        f"            command: {_flow(probe_command(ready=False))}",
        "          periodSeconds: 2",
        "          timeoutSeconds: 5",
        "          failureThreshold: 60",
        "        # restarts a worker whose event loop stopped (the record is older than --max-age)",
        "        livenessProbe:",
        "          exec:",
        f"            command: {_flow(probe_command(ready=False))}",
        "          periodSeconds: 10",
        "          timeoutSeconds: 5",
        "          failureThreshold: 3",
        "        # ready: connected to the broker and consuming its queues",
        "        readinessProbe:",
        "          exec:",
        f"            command: {_flow(probe_command(ready=True))}",
        "          periodSeconds: 5",
        "          timeoutSeconds: 5",
        "          failureThreshold: 2",
        "      volumes:",
        '      - name: "health"',
        "        emptyDir:",
        '          medium: "Memory"',
        "",
    ]
    return "\n".join(lines)


def secret(spec: KubernetesSpec, *, masked: bool = False) -> str:
    lines = [
        f"# The settings that hold a password, for {DEPLOYMENT_NAME} (written by `celeryctl deploy kubernetes`).",
        f"# Mode 0600: apply it (kubectl apply -f {SECRET_NAME}), then delete it or keep it out of git.",
        "apiVersion: v1",
        "kind: Secret",
        *_metadata(spec, secret_name(spec)),
        "type: Opaque",
        "stringData:",
    ]
    for key, value in spec.environment.items():
        if key in SECRET_KEYS:
            lines.append(f"  {secret_key(key)}: {y(masked_value(value) if masked else value)}")
    return "\n".join(lines) + "\n"


def next_steps(spec: KubernetesSpec, output: Path) -> list[str]:
    ns = f" -n {spec.namespace}" if spec.namespace else ""
    return [
        f"kubectl apply -f {shlex.quote(str(output / SECRET_NAME))}",
        f"kubectl apply -f {shlex.quote(str(output / DEPLOYMENT_NAME))}",
        f"kubectl rollout status deployment/{spec.name}{ns}",
    ]


def plan(spec: KubernetesSpec) -> DeployPlan:
    """The Deployment and the Secret for ``spec``, the kubectl commands, and what to know."""
    output = spec.output.absolute()
    files = [
        DeployFile(output / DEPLOYMENT_NAME, deployment(spec)),
        DeployFile(output / SECRET_NAME, secret(spec), PRIVATE_FILE, masked=secret(spec, masked=True)),
    ]
    notes = [
        f"{SECRET_NAME} holds the broker password (mode 0600): apply it, then delete it or keep it out of git",
        "the image must have celeryctl and your app installed, with `celeryctl` on PATH",
    ]
    return DeployPlan("kubernetes", output, files, next_steps(spec, output), notes)
