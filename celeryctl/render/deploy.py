"""What ``celeryctl deploy systemd | kubernetes`` show: the files written (or, with --dry-run, their
text with passwords masked) and, on stdout, the exact commands to run next."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeryctl import render

if TYPE_CHECKING:
    from celeryctl.deploy import DeployResult


def show(result: DeployResult, *, as_json: bool) -> None:
    plan = result.plan
    if as_json:
        for message in plan.warnings:
            render.warn(message)
        render.emit_json(render.ok_doc(**result.to_dict()))
        return
    if not result.written:
        for i, f in enumerate(plan.files):
            masked = ", password masked" if f.secret else ""
            if i:
                render.out.print()
            render.out.print(f"# ==> {f.path} (mode {f.mode:04o}{masked}) <==", markup=False)
            render.out.print(f.shown, markup=False, end="" if f.shown.endswith("\n") else "\n")
        for path in result.existing:
            render.warn(f"{path} exists: writing needs --force")
    for message in plan.warnings:
        render.warn(message)
    if not result.written:
        render.info(f"dry run: nothing written; without --dry-run these {len(plan.files)} files are written")
        return
    for f in plan.files:
        replaced = " (replaced)" if f.path in result.existing else ""
        render.info(f"wrote {f.path} (mode {f.mode:04o}){replaced}")
    for note in plan.notes:
        render.info(note)
    render.info("next:")
    for step in plan.next_steps:
        render.out.print(step, markup=False)
