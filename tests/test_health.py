"""``celeryctl probe worker`` on records written by the test: every verdict, both paths of the
console script (the fast one and the full CLI) printing the same, and what the fast path imports.

The same probes against a real worker (busy, frozen, killed, broker gone): tests/faults/test_health.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from celeryctl import health
from tests.conftest import CliRun


def record(**fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1,
        "node": "w1@box",
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "state": "ready",
        "connected": True,
        "consuming": True,
        "queues": ["celery"],
        "active": 1,
        "processed": 7,
        "heartbeat": time.time() - 0.5,
    }
    doc.update(fields)
    return doc


def verdict(doc: dict[str, Any], **kwargs: Any) -> health.Verdict:
    return health.evaluate(doc, now=time.time(), **kwargs)


def test_a_fresh_ready_record_is_alive_ready_and_says_what_it_does() -> None:
    v = verdict(record(), ready=True)
    assert v.ok and v.line().startswith("ready: w1@box ready, consuming celery, 1 active, 7 processed, heartbeat 0.")


@pytest.mark.parametrize(
    ("fields", "kwargs", "code", "text"),
    [
        ({"heartbeat": -30}, {}, "stale", "ready, but the last heartbeat was 30 s ago (--max-age 10 s)"),
        ({"state": "stopped"}, {}, "stopped", "stopped 0."),
        ({"state": "reconnecting", "connected": False, "consuming": False}, {"ready": True}, "not_ready",
         "reconnecting: not connected to the broker"),
        ({"consuming": False, "queues": []}, {"ready": True}, "not_ready", "ready: consuming no queue"),
        ({}, {"beat": True}, "no_beat", "runs no beat scheduler"),
        ({"beat": {"tick": -100, "next_in": 5.0}}, {"beat": True}, "beat_stale",
         "beat last ran its schedule 100 s ago (allowed 15 s)"),
    ],
)
def test_each_failure_names_its_reason(fields: dict[str, Any], kwargs: dict[str, Any], code: str, text: str) -> None:
    now = time.time()  # times in the table are relative to now
    if "heartbeat" in fields:
        fields = {**fields, "heartbeat": now + fields["heartbeat"]}
    if "beat" in fields:
        fields = {**fields, "beat": {**fields["beat"], "tick": now + fields["beat"]["tick"]}}
    v = verdict(record(**fields), **kwargs)
    assert (v.ok, v.code) == (False, code) and text in v.line(), v.line()
    assert v.to_dict()["error"]["exit_code"] == 1 and v.hint()


def test_a_reconnecting_worker_is_alive_and_beat_waits_for_its_next_entry() -> None:
    assert verdict(record(state="reconnecting", connected=False, consuming=False)).ok  # liveness only
    v = verdict(record(beat={"tick": time.time() - 200, "next_in": 300.0, "last_sent": time.time() - 200,
                             "entry": "nightly"}), beat=True)
    assert v.ok and "beat sent nightly 3 min ago" in v.line()


def test_a_dead_process_fails_at_once() -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    v = verdict(record(pid=int(done.stdout)))
    assert (v.ok, v.code) == (False, "process_gone")


def write(folder: Path, doc: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{doc['node']}.json"
    path.write_text(json.dumps(doc))
    return path


FULL_CLI = [sys.executable, "-c", "from celeryctl.cli import main; main()"]


def both(cli: CliRun, isolated_env: dict[str, str], *args: str) -> tuple[Any, Any]:
    """The same probe through the console script's fast path and through the full CLI."""
    fast = cli(*args)
    full = subprocess.run([*FULL_CLI, *args], capture_output=True, text=True, env=isolated_env, cwd=str(Path.cwd()))
    return fast, full


def test_fast_path_and_full_cli_answer_the_same(cli: CliRun, isolated_env: dict[str, str], tmp_path: Path) -> None:
    folder = Path(isolated_env["CELERYCTL_DATA_DIR"]) / "health"
    # no record at all
    fast, full = both(cli, isolated_env, "probe", "worker")
    assert (fast.returncode, fast.stdout) == (full.returncode, full.stdout) == (
        1, f"not alive: no worker keeps a health record in {folder}\n")
    # a record far in the past: the line does not depend on the second it is read
    write(folder, record(node="old@box", heartbeat=0.0, pid=None))
    for args in (("probe", "worker"), ("probe", "worker", "old@box", "--ready"), ("probe", "worker", "--json")):
        fast, full = both(cli, isolated_env, *args)
        if "--json" in args:  # the age in seconds, to the millisecond, moves on between the two runs
            fast.stdout, full.stdout = (json.dumps({**json.loads(o), "age": 0}) for o in (fast.stdout, full.stdout))
        assert (fast.returncode, fast.stdout, fast.stderr) == (full.returncode, full.stdout, full.stderr), args
        assert fast.returncode == 1 and "Traceback" not in fast.stderr
    assert "(--max-age 10 s)" in fast.json()["line"] and fast.json()["error"]["code"] == "stale"


def test_several_workers_need_a_name_and_a_live_one_is_chosen(cli: CliRun, isolated_env: dict[str, str]) -> None:
    folder = Path(isolated_env["CELERYCTL_DATA_DIR"]) / "health"
    write(folder, record(node="a@box"))
    write(folder, record(node="b@box"))
    r = cli("probe", "worker")
    assert r.returncode == 2 and "2 workers keep health records" in r.stderr and "a@box, b@box" in r.stderr
    assert "celeryctl probe worker NAME" in r.stderr and "Traceback" not in r.output
    write(folder, record(node="b@box", state="stopped"))
    r = cli("probe", "worker", "--ready")
    assert r.returncode == 0 and r.stdout.startswith("ready: a@box ready")
    write(folder, record(node="a@box", state="stopped"))  # none runs: the last to stop answers
    r = cli("probe", "worker")
    assert r.returncode == 1 and r.stdout.startswith("not alive: a@box stopped")
    r = cli("probe", "worker", "a", "--data-dir", str(folder.parent))  # "a" is a@<this host>: none here
    assert r.returncode == 1 and f"a@{socket.gethostname()}.json" in r.stdout


def test_bad_files_and_values(cli: CliRun, tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    r = cli("probe", "worker", "--file", str(junk))
    assert r.returncode == 1 and r.stdout == f"not alive: {junk} is not a health record\n"
    for bad in (["--max-age", "0"], ["--max-age", "soon"], ["--file"], ["--bogus"], ["../../etc/passwd"], [".hidden"]):
        r = cli("probe", "worker", *bad)
        assert r.returncode == 2 and "Traceback" not in r.output, bad
    r = cli("probe", "worker", "--help")
    assert r.returncode == 0 and "--max-age" in r.stdout


def test_the_fast_path_imports_no_cli_and_no_celery(tmp_path: Path, isolated_env: dict[str, str]) -> None:
    path = write(tmp_path, record())
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "celeryctl", "probe", "worker", "--file", str(path), "--ready"],
        capture_output=True, text=True, env=isolated_env,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("ready: w1@box ready")
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    for heavy in ("typer", "click", "rich", "celery", "kombu", "pika", "amqp"):
        assert heavy not in imported, heavy


def test_the_recorder_writes_whole_records_and_ends_stopped(tmp_path: Path) -> None:
    path = tmp_path / "health" / "w@h.json"
    path.parent.mkdir()
    rec = health.Recorder(path, "w@h", interval=0.05)
    rec.start()
    assert json.loads(path.read_text())["state"] == "starting"
    rec.update(state="ready", connected=True, consuming=True, queues=["q"])
    rec.loop_driven = True
    rec.tick(active=2)
    doc = json.loads(path.read_text()) if path.exists() else {}
    assert doc.get("state") in ("starting", "ready")
    rec.stop()
    doc = json.loads(path.read_text())
    assert (doc["state"], doc["connected"], doc["active"]) == ("stopped", False, 2)
    assert [p.name for p in path.parent.iterdir()] == ["w@h.json"]  # no temporary file left
