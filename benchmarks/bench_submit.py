"""Benchmark: celeryctl submit against a plain Celery client and raw pika, in one run.

Everything runs on a private RabbitMQ node of its own (temp dir, free port) with ONE worker
(``celeryctl worker -c 2``, durable defaults) that serves every client, and each figure is a
whole process timed from start to exit:

* publish: ``celeryctl submit add 1 2 --count N`` (confirmed by the broker) vs a ``.delay()``
  loop (anchor) vs raw pika publishing the same Celery message without confirms (the limit);
* end to end: ``celeryctl submit add 1 2 --count M --wait`` vs a ``.delay()`` loop then
  ``ResultSet.get()`` (anchor);
* broker down: ``celeryctl submit`` vs ``.delay()`` with the broker not running.

Usage: python3 benchmarks/bench_submit.py [--publish N] [--e2e M]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

Row = tuple[str, float, str]

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DELAY_LOOP = """
import sys, time
from celeryctl.demo import app, add
app.conf.broker_url = sys.argv[1]
app.conf.result_backend = "rpc://"
n, wait = int(sys.argv[2]), sys.argv[3] == "wait"
results = [add.delay(1, 2) for _ in range(n)]
if wait:
    from celery.result import ResultSet
    ResultSet(results).get(timeout=600)
"""

DELAY_DOWN = """
import sys
from celeryctl.demo import app, add
app.conf.broker_url = sys.argv[1]
try:
    add.delay(1, 2)
except Exception as exc:
    print(type(exc).__name__, file=sys.stderr)
    sys.exit(1)
"""

RAW_PIKA = """
import sys, uuid
import pika
from kombu.serialization import dumps
from celeryctl.demo import app
from celeryctl.broker import BrokerUrl
url, n = sys.argv[1], int(sys.argv[2])
app.conf.broker_url = url
tid = str(uuid.uuid4())
headers, props, body, _ = app.amqp.create_task_message(tid, "celeryctl.demo.add", (1, 2), {}, reply_to="bench")
ctype, enc, payload = dumps(body, serializer="json")
conn = pika.BlockingConnection(BrokerUrl.parse(url).pika_parameters(10))
ch = conn.channel()
ch.queue_declare("celery", durable=True)
for i in range(n):
    t = str(uuid.uuid4())
    h = dict(headers, id=t, root_id=t)
    ch.basic_publish("", "celery", payload, pika.BasicProperties(
        content_type=ctype, content_encoding=enc, headers=h, delivery_mode=2, correlation_id=t, reply_to="bench"))
conn.close()
"""


def free_port() -> int:
    from celeryctl.rabbitmq.node import pick_free_port

    return pick_free_port([], set())


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    return time.perf_counter() - started, proc


def queue_depth(url: str) -> int:
    import pika

    from celeryctl.broker import BrokerUrl

    conn = pika.BlockingConnection(BrokerUrl.parse(url).pika_parameters(5))
    try:
        return int(conn.channel().queue_declare("celery", durable=True, passive=True).method.message_count)
    finally:
        conn.close()


def purge(url: str) -> None:
    import pika

    from celeryctl.broker import BrokerUrl

    conn = pika.BlockingConnection(BrokerUrl.parse(url).pika_parameters(5))
    try:
        conn.channel().queue_purge("celery")
    finally:
        conn.close()


def settle(url: str, timeout: float = 300) -> None:
    """Purge what is queued and let the worker finish what it holds."""
    deadline = time.monotonic() + timeout
    purge(url)
    while queue_depth(url) and time.monotonic() < deadline:
        purge(url)
        time.sleep(0.2)
    time.sleep(1.0)


def start_worker(url: str, env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """A celeryctl worker (-c 2) on the node, once it answers a ping."""
    from celery import Celery

    hostname = f"bench@{socket.gethostname()}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celeryctl", "worker", "-c", "2", "-l", "WARNING", "-n", hostname],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    probe = Celery("bench-ping", broker=url)
    deadline = time.monotonic() + 60
    while not probe.control.ping(destination=[hostname], timeout=0.5):
        if time.monotonic() > deadline or worker.poll() is not None:
            raise SystemExit(f"worker did not start; see {log.name}")
    probe.close()
    return worker


def measure_publish(url: str, env: dict[str, str], n: int, rows: list[Row]) -> dict[str, float]:
    py = sys.executable
    t_delay, p = timed([py, "-c", DELAY_LOOP, url, str(n), "nowait"], env)
    assert p.returncode == 0, p.stderr
    settle(url)
    t_ctl, p = timed([py, "-m", "celeryctl", "submit", "add", "1", "2", "--count", str(n), "--json"], env)
    assert p.returncode == 0, p.stderr
    inner = json.loads(p.stdout)
    settle(url)
    t_pika, p = timed([py, "-c", RAW_PIKA, url, str(n)], env)
    assert p.returncode == 0, p.stderr
    settle(url)
    r_delay, r_ctl, r_pika = n / t_delay, n / t_ctl, n / t_pika
    rows += [
        (f"publish {n}: .delay() loop (anchor)", r_delay, f"{t_delay:.2f} s"),
        (
            f"publish {n}: celeryctl submit --count (confirmed)",
            r_ctl,
            f"{t_ctl:.2f} s; publishing alone {inner['publish_rate']:,.0f}/s",
        ),
        (f"publish {n}: raw pika, no confirms (limit)", r_pika, f"{t_pika:.2f} s"),
    ]
    return {"delay": r_delay, "ctl": r_ctl, "pika": r_pika}


def measure_end_to_end(url: str, env: dict[str, str], m: int, rows: list[Row]) -> dict[str, float]:
    py = sys.executable
    t_e2e_anchor, p = timed([py, "-c", DELAY_LOOP, url, str(m), "wait"], env)
    assert p.returncode == 0, p.stderr
    time.sleep(1.0)
    t_e2e_ctl, p = timed([py, "-m", "celeryctl", "submit", "add", "1", "2", "--count", str(m), "--wait", "--json"], env)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["succeeded"] == m, doc
    e_anchor, e_ctl = m / t_e2e_anchor, m / t_e2e_ctl
    # The worker's own ceiling: M tasks published at once, timed until the queue is empty.
    time.sleep(1.0)
    started = time.perf_counter()
    _, p = timed([py, "-m", "celeryctl", "submit", "add", "1", "2", "--count", str(m), "--json"], env)
    assert p.returncode == 0, p.stderr
    while queue_depth(url):
        time.sleep(0.05)
    drain = m / (time.perf_counter() - started)
    time.sleep(1.0)
    rows += [
        (f"end to end {m}: .delay() + ResultSet.get() (anchor)", e_anchor, f"{t_e2e_anchor:.2f} s"),
        (f"end to end {m}: celeryctl submit --count --wait", e_ctl, f"{t_e2e_ctl:.2f} s"),
        (f"the worker alone drains {m} (ceiling for end to end)", drain, "publish, then until the queue is empty"),
    ]
    return {"anchor": e_anchor, "ctl": e_ctl, "drain": drain}


def measure_broker_down(env: dict[str, str]) -> dict[str, float]:
    py = sys.executable
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    t_down_ctl, p = timed([py, "-m", "celeryctl", "submit", "add", "1", "2", "--broker", down], env)
    assert p.returncode == 6, p.stderr
    t_down_delay, p = timed([py, "-c", DELAY_DOWN, down], env)
    # A broker that accepts TCP but never answers (hung, or a firewall that swallows packets).
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(64)
        silent = f"amqp://guest:guest@127.0.0.1:{mute.getsockname()[1]}//"
        t_mute_ctl, p = timed([py, "-m", "celeryctl", "submit", "add", "1", "2", "--broker", silent], env)
        assert p.returncode == 6, p.stderr
        t_mute_delay, p = timed([py, "-c", DELAY_DOWN, silent], env)
    return {"down_ctl": t_down_ctl, "down_delay": t_down_delay, "mute_ctl": t_mute_ctl, "mute_delay": t_mute_delay}


def report(rows: list[Row], pub: dict[str, float], e2e: dict[str, float], down: dict[str, float]) -> None:
    print(f"{'measure':58} {'tasks/s':>10}  notes")
    for label, rate, note in rows:
        print(f"{label:58} {rate:>10,.0f}  {note}")
    print()
    print(f"publish: celeryctl / .delay()          = {pub['ctl'] / pub['delay']:.2f}x  (goal >= 3)")
    print(f"publish: celeryctl / raw pika          = {pub['ctl'] / pub['pika']:.2f}x  (goal >= 0.5)")
    print(f"end to end: celeryctl / plain client   = {e2e['ctl'] / e2e['anchor']:.2f}x  (goal >= 1.8)")
    print(
        f"end to end: celeryctl / worker ceiling = {e2e['ctl'] / e2e['drain']:.2f}x  (the worker is the limit near 1)"
    )
    print(
        f"end to end: worker ceiling / plain client = {e2e['drain'] / e2e['anchor']:.2f}x  "
        "(the most any client could reach against this worker on this machine)"
    )
    print(
        f"broker down (refused): celeryctl submit {down['down_ctl']:.2f} s (exit 6, one line) vs .delay() "
        f"{down['down_delay']:.2f} s (ratio {down['down_delay'] / down['down_ctl']:.1f}x)"
    )
    print(
        f"broker silent (accepts, never answers): celeryctl submit {down['mute_ctl']:.2f} s (exit 6) vs .delay() "
        f"{down['mute_delay']:.2f} s (ratio {down['mute_delay'] / down['mute_ctl']:.1f}x)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publish", type=int, default=20000, help="tasks for the publish comparison")
    parser.add_argument("--e2e", type=int, default=5000, help="tasks for the end-to-end comparison")
    opts = parser.parse_args()

    from celeryctl.rabbitmq.node import Node

    tmp = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    node = Node(tmp / "node")
    info, _ = node.start(free_port())
    url = info.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYCTL_")}
    env.update({"CELERYCTL_BROKER_URL": url, "CELERYCTL_DATA_DIR": str(tmp / "data"), "PYTHONPATH": str(REPO)})
    rows: list[Row] = []
    with open(tmp / "worker.log", "wb") as log:
        worker = None
        try:
            worker = start_worker(url, env, log)
            pub = measure_publish(url, env, opts.publish, rows)
            e2e = measure_end_to_end(url, env, opts.e2e, rows)
            down = measure_broker_down(env)
        finally:
            if worker is not None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(60)
                except subprocess.TimeoutExpired:
                    worker.kill()
            node.stop()
    report(rows, pub, e2e, down)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
