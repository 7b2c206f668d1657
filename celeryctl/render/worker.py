"""What ``celeryctl worker`` shows before the worker starts: a panel of its settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeryctl import render

if TYPE_CHECKING:
    from celeryctl.worker import WorkerPlan


def banner(plan: WorkerPlan) -> None:
    """The worker's settings in a panel on stderr, before Celery's own banner."""
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("app", escape(plan.app))
    table.add_row("broker", escape(plan.broker))
    table.add_row("results", escape(plan.backend))
    table.add_row("queues", escape(", ".join(plan.queues)))
    if plan.queue_type == "quorum":
        table.add_row(
            "delivery",
            f"quorum queues, at most {plan.max_deliveries} deliveries, then dead-lettered to QUEUE.dead",
        )
    elif plan.queue_type == "classic":
        table.add_row(
            "delivery",
            "classic queues: no delivery limit, no dead-letter queue "
            "(celeryctl.configure(app) in the app's module gives quorum queues)",
        )
    elif plan.queue_type == "app":
        table.add_row("delivery", "the app's own queues (task_queues)")
    if plan.health_file:
        where = plan.health_file
        if plan.health_port is not None:
            where += f"\nhttp://127.0.0.1:{plan.health_port}/livez and /readyz"
        table.add_row("health", escape(where) + f"\n[dim]celeryctl probe worker {escape(plan.node)} [--ready][/]")
    table.add_row("SIGTERM", f"running tasks get {plan.grace:g} s to finish, then are re-queued")
    table.add_row("concurrency", f"{plan.concurrency} ({escape(plan.pool)})")
    if plan.beat:
        table.add_row("beat", "on")
    if plan.applied_defaults:
        table.add_row("defaults", escape(", ".join(f"{k}={v}" for k, v in plan.applied_defaults.items())))
    table.add_row("tasks", escape("\n".join(plan.tasks) or "(none registered)"))
    render.err.print(Panel(table, title="celeryctl worker", expand=False))
