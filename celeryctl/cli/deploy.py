"""celeryctl deploy systemd | deploy kubernetes: service files that run workers in production."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from celeryctl.cli.options import (
    AppOpt,
    BackendOpt,
    BrokerOpt,
    JsonOpt,
    MaxDeliveriesOpt,
    QueuesOpt,
    QueueTypeOpt,
    count_parser,
    resolve,
    seconds_parser,
)
from celeryctl.deploy import kubernetes as kubernetes_files
from celeryctl.deploy import systemd as systemd_files
from celeryctl.render import deploy as view
from celeryctl.worker_steps import DEFAULT_GRACE

if TYPE_CHECKING:
    from celeryctl.settings import Settings

app = typer.Typer(
    help="Write service files that run celeryctl workers in production: systemd units or a Kubernetes "
    "Deployment. Passwords go in a file of mode 0600 (an environment file, a Secret), never on a command line.",
    no_args_is_help=True,
    rich_markup_mode=None,  # plain click help: typer.rich_utils alone costs ~50 ms of start-up
)

GraceOpt = Annotated[
    float,
    typer.Option(
        "--grace",
        parser=seconds_parser(),
        metavar="SECONDS",
        help="The worker's --grace after SIGTERM; the service manager waits this plus 15 s before SIGKILL.",
    ),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the files (passwords masked) and write nothing.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite files that exist (never without it).")]


def _settings(
    broker: str | None, backend: str | None, app_spec: str | None, queue_type: str | None, max_deliveries: int | None
) -> Settings:
    return resolve(
        broker_url=broker,
        result_backend=backend,
        app=app_spec,
        queue_type=queue_type,
        max_deliveries=max_deliveries,
    )


@app.command()
def systemd(
    workers: Annotated[
        int,
        typer.Option(
            "--workers", "-w", parser=count_parser(low=1, high=100), metavar="N", help="Worker instances (1-100)."
        ),
    ] = 1,
    app_spec: AppOpt = None,
    queues: QueuesOpt = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user", "-u", metavar="USER", help="Run the workers as this user (default root).", show_default=False
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group", metavar="GROUP", help="...and this group (default: the user's own).", show_default=False
        ),
    ] = None,
    grace: GraceOpt = DEFAULT_GRACE,
    workdir: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            metavar="DIR",
            help="Directory the app (-A) is imported from (default: this directory when an app is set).",
            show_default=False,
        ),
    ] = None,
    env_file: Annotated[
        Path,
        typer.Option("--env-file", metavar="PATH", help="Where the units read the settings file from once installed."),
    ] = systemd_files.DEFAULT_ENV_FILE,
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="Where to write the files; --output /etc/systemd/system installs the units directly.",
        ),
    ] = systemd_files.DEFAULT_OUTPUT,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    broker: BrokerOpt = None,
    backend: BackendOpt = None,
    queue_type: QueueTypeOpt = None,
    max_deliveries: MaxDeliveriesOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Write systemd units for N workers: celeryctl-worker@.service, celeryctl-workers.target, celeryctl.env.

    The template unit runs `celeryctl worker -n w1@HOST ...` with Restart=on-failure, KillSignal=SIGTERM,
    KillMode=mixed (SIGTERM to the worker's main process only, so running tasks get --grace) and
    TimeoutStopSec = grace + 15 s; ExecStartPre waits for the broker (`celeryctl probe broker`).
    The settings (the broker URL with its password) go in celeryctl.env, mode 0600, which the units
    read through EnvironmentFile=.  Prints the commands that install and start them.
    """
    from celeryctl import deploy as core

    settings = _settings(broker, backend, app_spec, queue_type, max_deliveries)
    spec = systemd_files.SystemdSpec(
        program=core.celeryctl_program(),
        environment=core.worker_environment(settings),
        output=output,
        workers=workers,
        app=settings.app,
        queues=",".join(queues) if queues else None,
        user=user,
        group=group,
        grace=grace,
        workdir=(workdir or Path.cwd()).absolute() if (workdir or settings.app) else None,
        env_file=env_file,
    )
    plan = systemd_files.plan(spec)
    plan.warnings[:0] = core.broker_warnings(settings, remote=False)
    view.show(core.apply(plan, force=force, dry_run=dry_run), as_json=json_)


@app.command()
def kubernetes(
    image: Annotated[
        str | None,
        typer.Option(
            "--image",
            metavar="IMAGE",
            help="Container image with celeryctl and your app (required).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option("--workers", "-w", parser=count_parser(low=1, high=1000), metavar="N", help="Replicas (1-1000)."),
    ] = 1,
    app_spec: AppOpt = None,
    queues: QueuesOpt = None,
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="The Deployment's name.")] = "celeryctl-worker",
    namespace: Annotated[
        str | None,
        typer.Option(
            "--namespace", "-n", metavar="NS", help="Namespace (default: kubectl's current one).", show_default=False
        ),
    ] = None,
    grace: GraceOpt = DEFAULT_GRACE,
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="DIR", help="Where to write deployment.yaml and secret.yaml.")
    ] = kubernetes_files.DEFAULT_OUTPUT,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    broker: BrokerOpt = None,
    backend: BackendOpt = None,
    queue_type: QueueTypeOpt = None,
    max_deliveries: MaxDeliveriesOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Write a Kubernetes Deployment of workers (deployment.yaml) and its Secret (secret.yaml, mode 0600).

    The container runs `celeryctl worker` in exec form, so the worker gets SIGTERM itself;
    terminationGracePeriodSeconds = grace + 15 s.  Startup, liveness and readiness probes run
    `celeryctl probe worker --file ...` (the health record on an emptyDir, no broker round trip).
    The broker URL reaches the worker from the Secret (secretKeyRef), never on a command line.
    Prints the kubectl commands that apply them.
    """
    from celeryctl import deploy as core

    settings = _settings(broker, backend, app_spec, queue_type, max_deliveries)
    spec = kubernetes_files.KubernetesSpec(
        image=image,
        environment=core.worker_environment(settings),
        output=output,
        replicas=workers,
        app=settings.app,
        queues=",".join(queues) if queues else None,
        name=name,
        namespace=namespace,
        grace=grace,
    )
    plan = kubernetes_files.plan(spec)
    plan.warnings[:0] = core.broker_warnings(settings, remote=True)
    view.show(core.apply(plan, force=force, dry_run=dry_run), as_json=json_)
