"""``celeryctl flower`` for people: where Flower listens, and for which broker (masked)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from celeryctl import render
from celeryctl.broker import mask_url

if TYPE_CHECKING:
    from celeryctl.flower import FlowerPlan


def announce(plan: FlowerPlan, broker_url: str) -> None:
    """One line on stderr before Flower takes over the process."""
    render.info(
        f"Flower on {plan.url} ({'basic auth' if plan.auth else 'no auth'}) for broker {mask_url(broker_url)}"
        + (f", broker API {plan.broker_api}" if plan.broker_api else "")
        + "; Ctrl-C stops it"
    )
