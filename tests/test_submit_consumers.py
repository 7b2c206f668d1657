"""``submit.consumers``: the queue a task goes to and its consumer count, through broker.queue_depths."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import RabbitNode


@pytest.fixture
def app(rabbit: RabbitNode) -> Iterator[Any]:
    from celery import Celery

    from celeryctl.submit import prepare_client

    app = Celery(f"consumers-{uuid.uuid4().hex[:8]}", broker=rabbit.url)
    app.task(name="t.add")(lambda x, y: x + y)
    prepare_client(app)
    yield app
    app.close()


def test_a_queue_that_does_not_exist_has_no_consumer(app: Any) -> None:
    from celeryctl.submit import consumers

    queue = f"missing-{uuid.uuid4().hex[:8]}"
    assert consumers(app, "t.add", queue) == (queue, 0)


def test_consumers_of_an_existing_queue_are_counted(app: Any) -> None:
    from kombu import Queue

    from celeryctl.submit import consumers

    name = f"counted-{uuid.uuid4().hex[:8]}"
    with app.connection_for_write() as conn:
        channel = conn.channel()
        queue = Queue(name, auto_delete=True)(channel)
        queue.declare()
        assert consumers(app, "t.add", name) == (name, 0)
        queue.consume(consumer_tag="c1", callback=lambda _m: None)
        assert consumers(app, "t.add", name) == (name, 1)


def test_the_apps_routing_names_the_queue(app: Any) -> None:
    from celeryctl.submit import consumers

    name = f"routed-{uuid.uuid4().hex[:8]}"
    app.conf.task_routes = {"t.add": {"queue": name}}
    assert consumers(app, "t.add") == (name, 0)


def test_a_router_that_raises_gives_no_count(app: Any) -> None:
    from celeryctl.submit import consumers

    def router(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("the app's router is broken")

    app.conf.task_routes = (router,)
    assert consumers(app, "t.add") == ("", None)


def test_a_broker_that_went_away_gives_no_count() -> None:
    from celery import Celery

    from celeryctl.rabbitmq.node import pick_free_port
    from celeryctl.submit import consumers, prepare_client

    app = Celery("consumers-down", broker=f"amqp://guest:guest@127.0.0.1:{pick_free_port([], set())}//")
    app.task(name="t.add")(lambda x, y: x + y)
    prepare_client(app)
    assert consumers(app, "t.add", "q") == ("q", None)
