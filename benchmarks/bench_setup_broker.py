"""setup-broker speed against plain rabbitmqctl, measured in the same run on a private node.

Anchors: one ``rabbitmqctl list_users`` call, and the tutorial's four sequential calls
(add_user, add_vhost, set_user_tags, set_permissions).  Goals: a re-run with nothing to change
takes <= 2.0 x the first anchor; a fresh setup including the AMQP verification takes <= the second.

A fresh setup is two rabbitmqctl calls (``export_definitions``, then one ``import_definitions``
with every change) and the AMQP login.  The core function (``celeryctl.rabbitmq.provision.setup``)
is called directly, so the figures are the provisioning work without the CLI's Python start-up
(shown separately for the CLI).

The node runs the management plugin, so the same re-run is also measured through the management
HTTP API (``setup-broker --api``: three GETs, no Erlang VM booted) against the rabbitmqctl path
on the same node, in the same rounds.

    python3 benchmarks/bench_setup_broker.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from celeryctl.rabbitmq import provision
from celeryctl.rabbitmq.node import Node, pick_free_port
from celeryctl.rabbitmq.plan import Request
from celeryctl.settings import load_settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = max(1, args.rounds)

    with tempfile.TemporaryDirectory(prefix="bench-setup-broker-") as tmp:
        data_dir = Path(tmp)
        node = Node(data_dir / "node")
        info, _ = node.start(pick_free_port([], set()), management=True)
        try:
            runner = node.runner(info)
            settings = load_settings(env={"CELERYCTL_DATA_DIR": str(data_dir)}, cwd=data_dir)
            assert info.management_url
            api_url = info.management_url.replace("http://", "http://guest:guest@")
            api_env = {"CELERYCTL_DATA_DIR": str(data_dir), "CELERYCTL_MANAGEMENT_URL": api_url}
            api_settings = load_settings(env=api_env, cwd=data_dir)
            tag = uuid.uuid4().hex[:6]

            def anchor_one(_i: int) -> None:
                runner.run("list_users")

            def anchor_tutorial(i: int) -> None:
                user, vhost, pw = f"tut-{tag}-{i}", f"tutv-{tag}-{i}", "jimmy123"
                runner.run("add_user", user, pw)  # the tutorial's way: password in argv
                runner.run("add_vhost", vhost)
                runner.run("set_user_tags", user, "mytag")
                runner.run("set_permissions", "-p", vhost, user, ".*", ".*", ".*")

            def fresh(i: int) -> None:
                request = Request(user=f"new-{tag}-{i}", vhost=f"newv-{tag}-{i}", tags=["mytag"])
                result = provision.setup(request, settings)
                assert result.changed and result.verification and result.verification.ok
                assert [s.name for s in result.plan.steps] == ["import_definitions"]

            def fresh_default(i: int) -> None:
                request = Request(user=f"def-{tag}-{i}", vhost=f"defv-{tag}-{i}")
                result = provision.setup(request, settings)
                assert result.changed and result.verification and result.verification.ok

            fixed = Request(user=f"same-{tag}", vhost=f"samev-{tag}", password="bench-" + tag)
            provision.setup(fixed, settings)

            def rerun(_i: int) -> None:
                result = provision.setup(fixed, settings)
                assert not result.changed and result.verification and result.verification.ok

            def api_rerun(_i: int) -> None:
                result = provision.setup(fixed, api_settings)
                assert not result.changed and result.verification and result.verification.ok
                assert result.via == "api"

            def cli_run(extra_env: dict[str, str]) -> None:
                subprocess.run(
                    [sys.executable, "-m", "celeryctl", "setup-broker", "--user", fixed.user, "--vhost", fixed.vhost,
                     "--password-env", "BENCH_PW", "--no-save", "--json"],
                    env={**os.environ, "CELERYCTL_DATA_DIR": str(data_dir), "BENCH_PW": fixed.password or "",
                         **extra_env},
                    capture_output=True, check=True, cwd=tmp,
                )  # fmt: skip

            def cli_rerun(_i: int) -> None:
                cli_run({})

            def cli_api_rerun(_i: int) -> None:
                cli_run(api_env)

            runner.run("list_users")  # warm the disk cache
            # Interleaved rounds: anchors and goals see the same machine load.
            cases = {
                "one": anchor_one,
                "tutorial": anchor_tutorial,
                "rerun": rerun,
                "fresh": fresh,
                "fresh_default": fresh_default,
                "cli": cli_rerun,
                "api_rerun": api_rerun,
                "cli_api": cli_api_rerun,
            }
            times: dict[str, list[float]] = {k: [] for k in cases}
            for i in range(rounds):
                for name, fn in cases.items():
                    started = time.perf_counter()
                    fn(i)
                    times[name].append(time.perf_counter() - started)
            medians = {k: statistics.median(v) for k, v in times.items()}
        finally:
            node.stop()

    report(medians, rounds)
    return 0


def report(m: dict[str, float], rounds: int) -> None:
    """Print the medians, each goal with its anchor measured in the same run."""
    one, tutorial, no_change, setup_fresh, setup_default, cli, api_no_change, cli_api = (
        m[k] for k in ("one", "tutorial", "rerun", "fresh", "fresh_default", "cli", "api_rerun", "cli_api")
    )
    print(f"anchor: one rabbitmqctl list_users          {one:6.3f} s")
    print(f"anchor: tutorial's 4 sequential calls        {tutorial:6.3f} s")
    print(
        f"setup-broker re-run, nothing to change       {no_change:6.3f} s  = {no_change / one:.2f} x list_users (goal <= 2.0)"
    )
    print(
        f"setup-broker fresh setup incl. verification  {setup_fresh:6.3f} s  = {setup_fresh / tutorial:.2f} x tutorial (goal <= 1.0)"
    )
    print(
        f"  same, default request (no tags)            {setup_default:6.3f} s  = {setup_default / tutorial:.2f} x tutorial"
    )
    print(f"(CLI 'celeryctl setup-broker' re-run, whole process: {cli:.3f} s = {cli / one:.2f} x list_users)")
    print(
        f"setup-broker --api re-run, nothing to change {api_no_change:6.3f} s  vs rabbitmqctl path {no_change:.3f} s"
        f" = {no_change / api_no_change:.1f} x faster (goal: several times)"
    )
    print(
        f"(CLI re-run, whole process: --api {cli_api:.3f} s vs rabbitmqctl {cli:.3f} s = {cli / cli_api:.1f} x faster)"
    )
    print(f"median of {rounds} rounds; core function provision.setup() called directly; {os.cpu_count()} CPUs")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    raise SystemExit(main())
