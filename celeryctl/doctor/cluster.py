"""A cluster's members, alarms per node, quorum queues and policies, whichever source tells them.

Two sources, one shape (:class:`ClusterView`): celeryctl's own local cluster through rabbitmqctl
on a running member (``cluster_status``, ``list_queues``, ``list_policies`` and, on every running
member, ``rabbitmq-queues check_if_node_is_quorum_critical``: all at once, each call boots an
Erlang VM, ~0.4 s), or the management API (``/api/nodes``, ``/api/queues/VHOST``,
``/api/policies/VHOST``; quorum-critical members computed from the queues) for any other broker.  The checks (:func:`members_check`,
:func:`quorum_check`) are pure functions of the view.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celeryctl.doctor.check import FAIL, OK, WARN, Check
from celeryctl.errors import CeleryctlError

if TYPE_CHECKING:
    from celeryctl.broker import BrokerUrl
    from celeryctl.rabbitmq.api import ManagementApi
    from celeryctl.rabbitmq.ctl import Runner
    from celeryctl.settings import Settings

RABBITMQCTL, API = "rabbitmqctl", "management API"
QUEUE_COLUMNS = ("name", "type", "durable", "auto_delete", "exclusive", "leader", "members", "online")
CONVERT_HINT = "replicate it: celeryctl convert-queue {queue} --to quorum"


@dataclass
class ClusterView:
    """What a source says about the cluster; ``None`` fields were not asked (or could not be)."""

    source: str
    members: list[dict[str, Any]]  # {"name", "running"}
    partitions: list[str] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)  # {"node", "resource"}
    queues: list[dict[str, Any]] | None = None  # QUEUE_COLUMNS of the URL's vhost
    policies: list[dict[str, Any]] | None = None  # {"name", "pattern", "definition"}
    critical: dict[str, list[str]] | None = None  # node -> quorum queues it is critical for
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def is_cluster(self) -> bool:
        return len(self.members) > 1


# --------------------------------------------------------------------------- reading: rabbitmqctl


def read_local_cluster(settings: Settings, target: BrokerUrl, timeout: float) -> ClusterView | None:
    """celeryctl's local cluster (of more than one member) that ``target`` names, asked through
    rabbitmqctl on its first running member; None when the broker is not such a cluster, or no
    member it names runs (the TCP check says so).

    Every call boots an Erlang VM (~0.4 s of CPU), so few run: ``cluster_status`` and
    ``list_queues`` at once; ``list_policies`` only when a queue has a policy; and
    ``check_if_node_is_quorum_critical`` only on the members the queue list shows critical (none
    while every member runs), where it also names the queues of other vhosts.
    """
    started = time.monotonic()
    try:
        cluster = settings.local_cluster()
        if not cluster.is_cluster:
            return None
        running: dict[str, Runner] = {}
        for node in cluster.members:
            info = node.running_info()
            if info is not None and target.is_node(info):
                running[info.name] = node.runner(info, timeout=max(10.0, timeout * 5))
    except CeleryctlError:
        return None
    if not running:
        return None
    first = next(iter(running.values()))
    vhost = target.vhost
    answers, errors = _parallel(
        {
            "status": lambda: first.json("cluster_status"),
            "queues": lambda: first.json("list_queues", "-p", vhost, *QUEUE_COLUMNS, "policy"),
        }
    )
    status = answers.get("status")
    if not isinstance(status, dict):
        return ClusterView(RABBITMQCTL, [], seconds=time.monotonic() - started, errors=errors)
    view = view_from_cluster_status(status)
    view.errors = errors
    if "queues" in answers:
        view.queues = _list(answers["queues"])
        later: dict[str, Any] = {}
        if any(q.get("policy") for q in view.queues):
            later["policies"] = lambda: first.json("list_policies", "-p", vhost)
        for name in critical_members(view.queues):
            if name in running:
                later[f"critical:{name}"] = lambda r=running[name]: _quorum_critical(r)
        if any(not m["running"] for m in view.members):
            # A quorum queue whose leader is down (and cannot elect one) is missing from list_queues.
            later["definitions"] = lambda: first.run("export_definitions", "-", "--format", "json").json()
        more, errors = _parallel(later)
        view.errors += errors
        view.policies = _list(more.get("policies")) if "policies" in later else []
        view.critical = {k.partition(":")[2]: v for k, v in more.items() if k.startswith("critical:") and v}
        view.queues += _leaderless(first, vhost, view.queues, more.get("definitions"), view.errors)
    view.seconds = time.monotonic() - started
    return view


#: At most this many leaderless queues are asked for their members (one Erlang VM each).
LEADERLESS_ASKED = 3


def _leaderless(
    runner: Runner, vhost: str, listed: list[dict[str, Any]], definitions: Any, errors: list[str]
) -> list[dict[str, Any]]:
    """The vhost's quorum queues that the definitions hold and ``list_queues`` does not show (no
    leader), with their members and those online from ``rabbitmq-queues quorum_status``."""
    if not isinstance(definitions, dict):
        return []
    shown = {str(q.get("name")) for q in listed}
    missing = [
        str(q.get("name"))
        for q in _list(definitions.get("queues"))
        if q.get("vhost") == vhost
        and (q.get("arguments") or {}).get("x-queue-type") == "quorum"
        and str(q.get("name")) not in shown
    ]
    asked = missing[:LEADERLESS_ASKED]
    answers: dict[str, Any] = {}
    if asked:
        answers, failed = _parallel(
            {
                name: lambda n=name: runner.json("quorum_status", n, "-p", vhost, tool="rabbitmq-queues")
                for name in asked
            }
        )
        errors += failed
    return [_from_quorum_status(name, answers.get(name)) for name in missing]


def _from_quorum_status(name: str, status: Any) -> dict[str, Any]:
    """A queue row from ``quorum_status`` (one entry per member: its Raft state, a list when down)."""
    rows = _list(status)
    online = [str(r.get("Node Name")) for r in rows if isinstance(r.get("Raft State"), str)]
    leader = next((str(r.get("Node Name")) for r in rows if r.get("Raft State") == "leader"), None)
    members = [str(r.get("Node Name")) for r in rows]  # [] when not asked: unknown
    return {"name": name, "type": "quorum", "durable": True, "leader": leader, "members": members, "online": online}


def critical_members(queues: list[dict[str, Any]]) -> dict[str, list[str]]:
    """From a queue list: each member whose stop would take quorum queues below a majority, and
    those queues (the answer of check_if_node_is_quorum_critical, for these queues only)."""
    out: dict[str, list[str]] = {}
    for q in queues:
        if q.get("type") != "quorum":
            continue
        members, online = list(q.get("members") or []), list(q.get("online") or [])
        majority = len(members) // 2 + 1
        if len(members) > 1 and majority <= len(online) < majority + 1:  # already lost: nothing to warn of
            for node in online:
                out.setdefault(str(node), []).append(str(q.get("name")))
    return dict(sorted(out.items()))


def _parallel(calls: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Run the calls at once: (answers by key, one line per call that failed)."""
    if not calls:
        return {}, []
    answers: dict[str, Any] = {}
    errors: list[str] = []
    with ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="doctor-ctl") as pool:
        futures = {key: pool.submit(call) for key, call in calls.items()}
        for key, future in futures.items():
            try:
                answers[key] = future.result()
            except CeleryctlError as exc:
                errors.append(f"{key.partition(':')[0]}: {exc.message}")
    return answers, errors


def view_from_cluster_status(doc: dict[str, Any]) -> ClusterView:
    """``rabbitmqctl cluster_status --formatter json`` as a view: members, partitions, alarms."""
    running = {str(n) for n in doc.get("running_nodes") or []}
    names = [str(n) for n in (doc.get("disk_nodes") or []) + (doc.get("ram_nodes") or [])] or sorted(running)
    members = [{"name": n, "running": n in running} for n in names]
    parts = doc.get("partitions") or {}
    partitions = sorted(f"{k}: {', '.join(map(str, v))}" for k, v in parts.items()) if isinstance(parts, dict) else []
    alarms = [
        {"node": a.get("node"), "resource": str(a.get("type") or a.get("resource") or a)}
        if isinstance(a, dict)
        else {"node": None, "resource": str(a)}
        for a in doc.get("alarms") or []
    ]
    return ClusterView(RABBITMQCTL, members, partitions, alarms)


def _quorum_critical(runner: Runner) -> list[str]:
    """The quorum queues that stopping this member would take below a majority (none: [])."""
    result = runner.run("check_if_node_is_quorum_critical", "--formatter", "json", tool="rabbitmq-queues", check=False)
    if result.returncode == 0:
        return []
    import json

    try:
        doc = json.loads(result.stderr.strip() or result.stdout.strip() or "{}")
    except ValueError:
        doc = {}
    queues = doc.get("queues") if isinstance(doc, dict) else None
    if not queues:  # not the check's verdict: the tool itself failed
        from celeryctl.rabbitmq.ctl import classify_failure

        raise classify_failure(result, runner.node)
    return [f"{q.get('name')} (vhost {q.get('virtual_host')})" if isinstance(q, dict) else str(q) for q in queues]


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value or [] if isinstance(v, dict)]


# --------------------------------------------------------------------------- reading: the management API


def read_api_cluster(api: ManagementApi, vhost: str, nodes: list[dict[str, Any]]) -> ClusterView:
    """The same view through the management API (``nodes``: ``/api/nodes``, already asked)."""
    started = time.monotonic()
    members = [{"name": str(n.get("name")), "running": bool(n.get("running"))} for n in nodes]
    partitions = sorted({str(p) for n in nodes for p in n.get("partitions") or []})
    view = ClusterView(API, members, partitions)
    try:
        queues = api.get(f"api/queues/{_quote(vhost)}", params={"columns": ",".join(QUEUE_COLUMNS)}) or []
        view.queues = [_api_queue(q) for q in queues if isinstance(q, dict)]
    except CeleryctlError as exc:
        view.errors.append(f"queues: {exc.message}")
    try:
        view.policies = _list(api.get(f"api/policies/{_quote(vhost)}"))
    except CeleryctlError as exc:
        view.errors.append(f"policies: {exc.message}")
    if view.queues is not None:
        view.critical = critical_members(view.queues)
    view.seconds = time.monotonic() - started
    return view


def _api_queue(q: dict[str, Any]) -> dict[str, Any]:
    out = {k: q.get(k) for k in QUEUE_COLUMNS}
    # The API names a quorum queue's leader "leader" (3.8+) or "node"; members and online are lists.
    out["leader"] = q.get("leader") or (q.get("node") if q.get("type") == "quorum" else None)
    return out


def _quote(vhost: str) -> str:
    from urllib.parse import quote

    return quote(vhost, safe="")


# --------------------------------------------------------------------------- the checks


def members_check(view: ClusterView, seconds: float | None = None) -> Check:
    """Check "cluster members": WARN for a member that is down, FAIL for a network partition."""
    members, partitions = view.members, view.partitions
    down = [str(m["name"]) for m in members if not m["running"]]
    running = len(members) - len(down)
    data = {"asked": True, "source": view.source, "members": members, "partitions": partitions}
    took = view.seconds if seconds is None else seconds
    via = f" ({view.source})"
    if partitions:
        return Check(
            "cluster",
            FAIL,
            took,
            f"network partition: {', '.join(partitions)} cut off{via}",
            "see RabbitMQ's partition handling (rabbitmq-diagnostics cluster_status on a member)",
            data,
        )
    if down:
        return Check(
            "cluster",
            WARN,
            took,
            f"{running} of {len(members)} member(s) running; not running: {', '.join(down)}{via}",
            "start the stopped member(s) (celeryctl broker start starts celeryctl's), "
            "or remove them: rabbitmqctl forget_cluster_node NODE",
            data,
        )
    names = ", ".join(str(m["name"]) for m in members)
    return Check("cluster", OK, took, f"{running} member(s) running: {names}{via}", data=data)


def unanswered(view: ClusterView) -> Check:
    """Check "cluster members" when the running member did not answer ``cluster_status``."""
    why = "; ".join(view.errors) or "no answer"
    return Check(
        "cluster",
        WARN,
        view.seconds,
        f"celeryctl's cluster did not say who its members are: {why}",
        "is the machine overloaded? celeryctl broker status shows each member",
        {"asked": True, "source": view.source, "errors": view.errors},
    )


def quorum_check(view: ClusterView | None, vhost: str) -> Check:
    """Check "quorum queues": per quorum queue of the vhost its leader and members online (FAIL
    below a majority, WARN with one down); members whose stop would lose a quorum (WARN); durable
    classic queues on a cluster (WARN: not replicated)."""
    if view is None:
        return Check(
            "quorum", OK, 0.0, "not asked: not celeryctl's local cluster and no management API", data={"asked": False}
        )
    if view.queues is None:
        why = "; ".join(view.errors) or "the queues could not be listed"
        return Check("quorum", WARN, view.seconds, f"not asked: {why}", data={"asked": False, "source": view.source})
    quorum = [q for q in view.queues if q.get("type") == "quorum"]
    rows = [_quorum_row(q) for q in quorum]
    lost = [r for r in rows if r["online"] < r["majority"]]
    degraded = [r for r in rows if r["majority"] <= r["online"] < r["members"]]
    classic = sorted(
        str(q.get("name"))
        for q in view.queues
        if q.get("type") in (None, "classic")
        and q.get("durable")
        and not q.get("exclusive")
        and not q.get("auto_delete")
    )
    critical = view.critical or {}
    data: dict[str, Any] = {
        "asked": True,
        "source": view.source,
        "vhost": vhost,
        "queues": rows,
        "critical": critical,
        "classic": classic if view.is_cluster else [],
    }
    problems: list[str] = []
    hints: list[str] = []
    status = OK
    if lost:
        status = FAIL
        problems.append("quorum lost: " + ", ".join(_shown(r) for r in lost))
        hints.append("start the stopped members: a quorum queue needs a majority of its members online to work")
    if degraded:
        status = WARN if status == OK else status
        problems.append("members down: " + ", ".join(_shown(r) for r in degraded))
        if not lost:
            down = sorted({n for r in degraded for n in r["down"]})
            hints.append(f"start {', '.join(down)} (celeryctl broker start starts celeryctl's members)")
    if critical:
        status = WARN if status == OK else status
        problems.append(
            "stopping "
            + "; ".join(f"{node} would lose the quorum of {', '.join(qs)}" for node, qs in sorted(critical.items()))
        )
        hints.append("do not stop or restart those members until the others are back")
    if classic and view.is_cluster:
        status = WARN if status == OK else status
        problems.append(f"classic queue(s) on a cluster, not replicated (lost with their node): {', '.join(classic)}")
        hints.append(CONVERT_HINT.format(queue=classic[0]))
    summary = (
        f"{len(quorum)} quorum queue(s) in '{vhost}'"
        + (": " + ", ".join(_shown(r) for r in rows) if rows and not problems else "")
        + f" ({view.source})"
    )
    if not problems:
        return Check("quorum", OK, view.seconds, summary, data=data)
    return Check("quorum", status, view.seconds, f"{summary}; " + "; ".join(problems), "; ".join(hints) or None, data)


def _quorum_row(q: dict[str, Any]) -> dict[str, Any]:
    members = [str(m) for m in q.get("members") or []]
    online = [str(m) for m in q.get("online") or []]
    size = len(members)  # 0: unknown (a leaderless queue not asked)
    return {
        "name": str(q.get("name")),
        "leader": q.get("leader") or None,
        "members": size,
        "online": len(online),
        "majority": size // 2 + 1,
        "down": sorted(set(members) - set(online)),
    }


def _shown(row: dict[str, Any]) -> str:
    if not row["members"]:
        return f"'{row['name']}' no leader, unavailable"
    leader = f", leader {row['leader']}" if row["leader"] and row["online"] >= row["majority"] else ", no leader"
    return f"'{row['name']}' {row['online']}/{row['members']} online{leader}"
