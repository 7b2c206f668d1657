"""celeryctl demo: the whole tutorial in one command."""

from __future__ import annotations


def demo() -> None:
    """Run the tutorial: broker, worker, longtime_add 1 2 with a live display, result."""
