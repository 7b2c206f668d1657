"""doctor, status and top on quorum queues and dead letters; doctor's pickle and guest checks.

Against the session's real node: a queue that already exists as classic (what a plain Celery
worker leaves behind) makes doctor fail with the way out; a message really dead-lettered by
RabbitMQ (rejected from a quorum queue declared by :mod:`celeryctl.topology`) is a warning in
doctor and a count in status and top.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from celeryctl import topology
from celeryctl.broker import BrokerUrl, queue_depth
from celeryctl.doctor.security import check_guest, check_serializer
from tests.conftest import REPO, CliResult, CliRun, RabbitNode, Vhost, VhostFactory, wait_for


def doctor(cli: CliRun, rabbit: RabbitNode, url: str, *args: str, **kw: Any) -> tuple[CliResult, dict[str, Any]]:
    env = {"CELERYCTL_DATA_DIR": str(rabbit.data_dir), **kw.pop("env", {})}
    res = cli("doctor", "--json", "--ping-timeout", "0.1", "--broker", url, *args, env=env, **kw)
    assert "Traceback" not in res.output, res.output
    return res, {c["name"]: c for c in res.json()["checks"]}


def own_node(rabbit: RabbitNode) -> dict[str, str]:
    return {"CELERYCTL_DATA_DIR": str(rabbit.data_dir)}


@pytest.fixture
def vhost(make_vhost: VhostFactory) -> Vhost:
    return make_vhost("reliab")


# --------------------------------------------------------------------------- queue types


def test_a_classic_celery_queue_fails_doctor_with_the_way_out(cli: CliRun, rabbit: RabbitNode, vhost: Vhost) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(_pika_url(vhost)))
    try:
        conn.channel().queue_declare("celery", durable=True)  # what a plain Celery worker declares
    finally:
        conn.close()
    res, checks = doctor(cli, rabbit, vhost.url)
    assert res.returncode == 1
    types = checks["queue_types"]
    assert types["status"] == "fail"
    assert types["detail"] == (
        "queue 'celery' already exists as a classic queue, and RabbitMQ refuses to redeclare it as a quorum queue"
    )
    assert "celeryctl convert-queue celery --to quorum" in types["hint"]
    assert "--queue-type classic" in types["hint"]
    assert [c for c, v in checks.items() if v["status"] == "fail"] == ["queue_types"]
    table = cli("doctor", "--ping-timeout", "0.1", "--broker", vhost.url, env=own_node(rabbit))
    assert table.returncode == 1 and "Traceback" not in table.output
    assert "queue types" in table.stdout and "convert-queue celery --to quorum" in table.stdout.replace("\n", " ")
    # The settings' classic: the same queue is what they ask for; doctor notes the missing limit.
    res, checks = doctor(cli, rabbit, vhost.url, "--queue-type", "classic")
    assert res.returncode == 0, res.output
    assert checks["queue_types"]["status"] == "ok"
    assert "no delivery limit" in checks["queue_types"]["detail"]
    assert checks["queue_types"]["status"] == "ok"


def _pika_url(vhost: Vhost) -> str:
    return f"amqp://guest:guest@127.0.0.1:{vhost.port}/{vhost.name}"


# --------------------------------------------------------------------------- dead letters


@pytest.fixture
def dead_lettered(vhost: Vhost) -> Iterator[Vhost]:
    """``celery`` declared as celeryctl declares it, one message rejected into ``celery.dead``."""
    topology.declare(vhost.url, ["celery"], topology.QueuePolicy())
    conn = pika.BlockingConnection(pika.URLParameters(_pika_url(vhost)))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", "celery", b"{}", pika.BasicProperties(delivery_mode=2))
        method = wait_for(lambda: ch.basic_get("celery")[0], what="the message")
        ch.basic_reject(
            method.delivery_tag,  # type: ignore[attr-defined]
            requeue=False,
        )  # RabbitMQ dead-letters it
    finally:
        conn.close()
    wait_for(lambda: queue_depth(vhost.url, "celery.dead").ready == 1, what="the dead letter")
    yield vhost


def test_a_dead_letter_is_a_doctor_warning_and_a_count_in_status_and_top(
    cli: CliRun, rabbit: RabbitNode, dead_lettered: Vhost
) -> None:
    url = dead_lettered.url
    res, checks = doctor(cli, rabbit, url)
    dead = checks["dead_letters"]
    assert dead["status"] == "warn"
    assert dead["detail"] == "dead-lettered messages wait in 'celery.dead' (1)"
    assert "celeryctl dead celery" in dead["hint"] and "celeryctl dead replay --all celery" in dead["hint"]
    assert checks["queue_types"]["status"] == "ok"  # declared exactly as celeryctl declares it
    assert "at most 5 deliveries" in checks["queue_types"]["detail"]
    # status: through rabbitmqctl (celeryctl's node), and through AMQP (another data dir)
    for env in (own_node(rabbit), {}):
        st = cli("status", "--json", "--broker", url, env=env)
        assert st.returncode == 0, st.output
        doc = st.json()
        queues = {q["name"]: q for q in doc["queues"]}
        assert queues["celery"]["dead"] == 1, doc
        assert "celery.dead" not in queues  # folded into its queue
        assert doc["totals"]["dead"] == 1
    human = cli("status", "--broker", url, env=own_node(rabbit))
    rows = [line.split() for line in human.stdout.splitlines()]
    assert ["queue", "ready", "unacked", "consumers", "dead"] in rows
    assert ["celery", "0", "0", "0", "1"] in rows
    assert "1 dead-lettered" in human.stdout
    top = cli("top", "--json", "--duration", "0.3", "--broker", url, env=own_node(rabbit))
    assert top.returncode == 0, top.output
    assert {q["name"]: q["dead"] for q in top.json()["queues"]}["celery"] == 1


def test_celery_delayed_queues_are_hidden_unless_all(cli: CliRun, rabbit: RabbitNode, vhost: Vhost) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(_pika_url(vhost)))
    try:
        conn.channel().queue_declare("celery_delayed_3", durable=True)
    finally:
        conn.close()
    for command in ("queues", "status"):
        shown = cli(command, "--json", "--broker", vhost.url, env=own_node(rabbit))
        assert "celery_delayed_3" not in [q["name"] for q in shown.json()["queues"]], command
        everything = cli(command, "--json", "--all", "--broker", vhost.url, env=own_node(rabbit))
        assert "celery_delayed_3" in [q["name"] for q in everything.json()["queues"]], command


# --------------------------------------------------------------------------- pickle


def test_an_app_that_accepts_pickle_is_a_warning(cli: CliRun, rabbit: RabbitNode, vhost: Vhost) -> None:
    res, checks = doctor(cli, rabbit, vhost.url, "-A", "tests.pickle_app", cwd=REPO)
    serializer = checks["serializer"]
    assert serializer["status"] == "warn"
    assert serializer["detail"].startswith("the app accepts pickle (accept_content, task_serializer)")
    assert "accept_content = ['json']" in serializer["hint"]
    from celeryctl.demo import app

    assert (check_serializer(app).status, check_serializer(app).detail) == ("ok", "accepts json")


def test_pickle_by_content_type_or_result_serializer() -> None:
    from celery import Celery

    app = Celery("x", set_as_current=False)
    app.conf.accept_content = ["application/x-python-serialize"]
    assert check_serializer(app).status == "warn"
    app = Celery("y", set_as_current=False)
    app.conf.result_serializer = "pickle"
    assert "result_serializer" in check_serializer(app).detail


# --------------------------------------------------------------------------- guest off loopback


def test_guest_is_not_tried_on_loopback(rabbit: RabbitNode) -> None:
    check = check_guest(BrokerUrl.parse(rabbit.url), 1.0)
    assert (check.status, check.detail) == ("ok", "the broker is on loopback: not tried")


def _outside_address() -> str:
    """This machine's address on its network (not loopback), or skip."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: only the route is chosen
        address = str(probe.getsockname()[0])
    except OSError:
        pytest.skip("no network address other than loopback")
    finally:
        probe.close()
    if address.startswith("127."):
        pytest.skip("no network address other than loopback")
    return address


class Forwarder:
    """TCP on ``address:port`` forwarded to the node on loopback.

    There is no second host here, so a broker "not on loopback" is the real node reached through
    this machine's network address.  RabbitMQ sees the forwarder's loopback connection, so guest
    gets in: exactly a broker whose ``loopback_users`` no longer protects guest.
    """

    def __init__(self, address: str, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server((address, 0))
        self.port = self.server.getsockname()[1]
        self.sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def test_guest_off_loopback_is_a_warning_when_it_gets_in(
    cli: CliRun, rabbit: RabbitNode, make_vhost: VhostFactory
) -> None:
    address = _outside_address()
    forwarder = Forwarder(address, rabbit.port)
    try:
        open_vhost = make_vhost("reliab-guest")  # guest has permissions here
        user = make_vhost.user("reliab", vhost=open_vhost, permissions=(".*", ".*", ".*"))
        url = f"amqp://{user.name}:{user.password}@{address}:{forwarder.port}/{open_vhost.name}"
        res, checks = doctor(cli, rabbit, url)
        guest = checks["guest"]
        assert guest["status"] == "warn", guest
        assert guest["detail"] == (
            f"guest:guest can log in to {address}:{forwarder.port} (vhost '{open_vhost.name}'), which is not on loopback"
        )
        assert "rabbitmqctl delete_user guest" in guest["hint"]
        assert user.password not in res.output
        # A vhost guest may not use: guest cannot log in there.
        closed = make_vhost("reliab-noguest", guest=False)
        make_vhost.runner.run("set_permissions", "-p", closed.name, "--", user.name, ".*", ".*", ".*")
        url = f"amqp://{user.name}:{user.password}@{address}:{forwarder.port}/{closed.name}"
        res, checks = doctor(cli, rabbit, url)
        assert checks["guest"]["status"] == "ok"
        assert checks["guest"]["detail"] == f"guest:guest cannot log in to {address}:{forwarder.port}"
    finally:
        forwarder.close()
