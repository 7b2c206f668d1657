"""celeryctl's local cluster: N private nodes on this machine, clustered with ``join_cluster``.

The first member is the single node's directory (``<data dir>/node``), so every command that
talks to "celeryctl's node" (rabbitmqctl, the management API) keeps working against member 1;
members 2..N live in ``<data dir>/node2`` ...  All members share the first one's Erlang cookie
and its epmd (Erlang finds its peers through epmd), listen on 127.0.0.1 only, and are listed in
``<data dir>/cluster.json``.  Starting a stopped cluster starts every member at once: a member
that stopped last waits for its peers before it opens its ports.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celeryctl.broker import DEFAULT_PORT, MANAGEMENT_PORT, mask_url
from celeryctl.errors import CeleryctlError, NodeError, UsageError
from celeryctl.files import write_file
from celeryctl.probe import amqp_handshake
from celeryctl.rabbitmq.ctl import Runner
from celeryctl.rabbitmq.node import CLUSTER_FILE, DIST_OFFSET, EPMD_OFFSET, HOST, Node, NodeInfo, pick_free_port

MAX_NODES = 7  # a local cluster to try things on; quorum needs an odd number to be useful
NODES_HINT = "use --nodes 3 (1 is a single node; a cluster of 3 survives the loss of one)"

Progress = Callable[[str], None]


def check_size(nodes: int) -> int:
    if not 1 <= nodes <= MAX_NODES:
        raise UsageError(f"--nodes must be 1-{MAX_NODES}, got {nodes}", NODES_HINT)
    return nodes


@dataclass
class MemberStatus:
    """One member as ``broker status`` shows it."""

    name: str
    port: int
    dist_port: int
    management_port: int | None
    pid: int | None
    running: bool
    data_dir: str
    alarms: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "running": self.running,
            "pid": self.pid if self.running else None,
            "port": self.port,
            "dist_port": self.dist_port,
            "management_port": self.management_port,
            "alarms": self.alarms,
            "data_dir": self.data_dir,
        }


@dataclass
class ClusterStatus:
    members: list[MemberStatus]
    partitions: list[str]
    url: str  # every member's URL, ``;``-separated (guest; loopback only)
    version: str | None

    @property
    def running(self) -> list[MemberStatus]:
        return [m for m in self.members if m.running]

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": len(self.members),
            "running": len(self.running),
            "members": [m.to_dict() for m in self.members],
            "partitions": self.partitions,
            "url": mask_url(self.url),
            "version": self.version,
        }


class Cluster:
    """celeryctl's node(s) under ``data_dir``: one node, or the members of a local cluster."""

    def __init__(self, data_dir: Path, bin_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self._bin_dir = bin_dir

    @property
    def file(self) -> Path:
        return self.data_dir / CLUSTER_FILE

    def _member(self, index: int) -> Node:
        return Node(self.data_dir / ("node" if index == 1 else f"node{index}"), bin_dir=self._bin_dir)

    @property
    def size(self) -> int:
        """How many members celeryctl started here (1: a single node, or none yet)."""
        try:
            return int(json.loads(self.file.read_text())["nodes"])
        except (OSError, ValueError, KeyError, TypeError):
            return 1

    @property
    def members(self) -> list[Node]:
        return [self._member(i) for i in range(1, self.size + 1)]

    @property
    def is_cluster(self) -> bool:
        return self.size > 1

    def infos(self) -> list[NodeInfo]:
        """The members' last known names and ports (running or not)."""
        return [info for info in (m.read_state() for m in self.members) if info is not None]

    def url(self) -> str | None:
        """Every member's guest URL, ``;``-separated (Celery's failover list), or None."""
        infos = self.infos()
        return ";".join(i.url for i in infos) if infos else None

    # ----------------------------------------------------------------- start
    def start(
        self,
        nodes: int | None = None,
        port: int | None = None,
        *,
        management: bool = False,
        timeout: float = 90.0,
        on_progress: Progress | None = None,
    ) -> tuple[list[NodeInfo], bool]:
        """Start every member (creating and joining the missing ones). Returns (infos, anything started)."""
        say = on_progress or (lambda _msg: None)
        current = self.size
        wanted = check_size(nodes) if nodes is not None else current
        if wanted < current:
            raise NodeError(
                f"celeryctl's broker in {self.data_dir} is a {current}-node cluster, not {wanted}",
                f"start it as it is: celeryctl broker start --nodes {current} "
                f"(or stop it and remove {self.data_dir} to start afresh)",
                details={"nodes": current, "requested_nodes": wanted},
            )
        first = self._member(1)
        known = first.read_state()
        if current > 1 and known is not None and port is not None and port != known.port:
            raise NodeError(
                f"celeryctl's cluster uses port {known.port} for its first node, not {port}",
                "start it without --port (each member keeps its ports)",
                details={"port": known.port, "requested_port": port},
            )
        if current > 1:
            return self._restart(management, timeout, say)
        if wanted == 1:
            info, started = first.start(port, management=management, timeout=timeout, on_progress=say)
            return [info], started
        return self._grow(port, wanted, management, timeout, say), True

    def _restart(self, management: bool, timeout: float, say: Progress) -> tuple[list[NodeInfo], bool]:
        """Start the stopped members of an existing cluster, all at once (they wait for each other)."""
        members = self.members
        down = [i for i, m in enumerate(members, 1) if m.running_info() is None]
        if down:
            say(f"starting {len(down)} of {len(members)} cluster members together")
        epmd = self._epmd_port()

        def start(index: int) -> tuple[NodeInfo, bool]:
            node = members[index - 1]
            previous = node.read_state()
            return node.start(
                previous.port if previous else None,
                management=management,
                epmd_port=epmd,
                dist_port=previous.dist_port if previous else None,
                management_port=previous.management_port if previous else None,
                timeout=timeout,
                on_progress=_prefixed(say, index),
            )

        with ThreadPoolExecutor(max_workers=len(members)) as pool:
            results = list(pool.map(start, range(1, len(members) + 1)))
        return [info for info, _ in results], any(started for _, started in results)

    def _epmd_port(self) -> int | None:
        info = self._member(1).read_state()
        return info.epmd_port if info else None

    def _grow(self, port: int | None, wanted: int, management: bool, timeout: float, say: Progress) -> list[NodeInfo]:
        """Start the first node (unless it runs) and members 2..wanted at once, join them to the
        first, write cluster.json.  A failure stops what this call started."""
        first = self._member(1)
        running = first.running_info()
        plans: list[_Plan] = []
        if running is not None:
            running, _ = first.start(port, management=management)  # checks that it matches the request
            base, epmd, mgmt_base = running.port, running.epmd_port, running.management_port
            used = {running.port, running.dist_port, running.epmd_port, running.management_port or 0}
        else:
            previous = first.read_state()
            base = port or (previous.port if previous else DEFAULT_PORT)
            used = {base}
            dist = _pick([base + DIST_OFFSET], used)
            epmd = _pick([dist + EPMD_OFFSET, dist + EPMD_OFFSET + 1], used)
            mgmt_base = _pick([MANAGEMENT_PORT, base + 10000], used) if management else None
            plans.append(_Plan(1, base, dist, mgmt_base))
        for index in range(2, wanted + 1):
            member_port = _pick([base + index - 1 + 10 * k for k in range(5)], used)
            dist = _pick([member_port + DIST_OFFSET], used)
            mgmt = (
                _pick([(mgmt_base or MANAGEMENT_PORT) + index - 1, member_port + 10000], used) if management else None
            )
            plans.append(_Plan(index, member_port, dist, mgmt))
        cookie = first.home / ".erlang.cookie"
        if not cookie.exists():  # a new cluster: the first node's cookie is the members' too
            first.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_file(cookie, "".join(secrets.choice(string.ascii_uppercase) for _ in range(32)), mode=0o400)
        for plan in plans[1:] if running is None else plans:
            home = self._member(plan.index).home
            home.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not (home / ".erlang.cookie").exists():
                write_file(home / ".erlang.cookie", cookie.read_text(), mode=0o400)
        say(f"starting {len(plans)} nodes together")

        def start(plan: _Plan) -> NodeInfo:
            info, _ = self._member(plan.index).start(
                plan.port,
                management=management,
                dist_port=plan.dist_port,
                epmd_port=epmd,
                management_port=plan.management_port,
                timeout=timeout,
                on_progress=_prefixed(say, plan.index),
            )
            return info

        try:
            with ThreadPoolExecutor(max_workers=len(plans)) as pool:
                infos = list(pool.map(start, plans))
            head = running or infos.pop(0)
            # cluster.json first: from now on stopping one member leaves the shared epmd alone.
            write_file(self.file, json.dumps({"nodes": wanted, "first": head.name}, indent=2) + "\n")
            joining = [(self._member(i).runner(info), info) for i, info in enumerate(infos, 2)]
            say(f"joining {', '.join(info.name for _, info in joining)} to {head.name}")
            _each(lambda r: r.run("stop_app"), [r for r, _ in joining])
            for runner, _ in joining:  # one at a time: each join changes the cluster's membership
                runner.run("join_cluster", head.name)
            _each(lambda r: r.run("start_app"), [r for r, _ in joining])
        except CeleryctlError:
            self.file.unlink(missing_ok=True)
            for plan in plans:
                self._member(plan.index).stop()
            if running is None:
                first.stop_epmd()
            raise
        return [head, *infos]

    # ----------------------------------------------------------------- stop
    def stop(self, on_progress: Progress | None = None) -> bool:
        """Stop every member and the shared epmd; no process is left. False when none ran."""
        say = on_progress or (lambda _msg: None)
        members = self.members
        if len(members) == 1:
            return members[0].stop(on_progress=say)
        with ThreadPoolExecutor(max_workers=len(members)) as pool:
            stopped = list(pool.map(lambda m: m.stop(on_progress=say), members))
        members[0].stop_epmd()
        return any(stopped)

    # ----------------------------------------------------------------- status
    def status(self) -> ClusterStatus:
        """Each member's state (pid, ports, AMQP answering), alarms and partitions (one rabbitmqctl call)."""
        members: list[MemberStatus] = []
        for node in self.members:
            info = node.read_state()
            if info is None:
                continue
            live = node.running_info()
            running = live is not None and amqp_handshake(HOST, info.port, timeout=2.0).ok
            members.append(
                MemberStatus(
                    info.name,
                    info.port,
                    info.dist_port,
                    info.management_port,
                    live.pid if live else None,
                    running,
                    str(node.dir),
                )
            )
        partitions: list[str] = []
        version = next((i.version for i in self.infos() if i.version), None)
        live_nodes = [(n, s) for n, s in zip(self.members, members, strict=False) if s.running]
        if live_nodes:
            partitions = self._read_cluster_status(live_nodes[0][0], members)
        return ClusterStatus(members, partitions, self.url() or "", version)

    @staticmethod
    def _read_cluster_status(node: Node, members: list[MemberStatus]) -> list[str]:
        """Fill each member's alarms from ``cluster_status``; return the partitions it reports."""
        try:
            doc = node.runner(timeout=15.0).json("cluster_status", "--formatter", "json")
        except CeleryctlError:
            return []
        by_name = {m.name: m for m in members}
        for alarm in doc.get("alarms") or []:
            member = by_name.get(str(alarm.get("node")))
            if member is not None:
                member.alarms.append(str(alarm.get("type") or alarm))
        parts = doc.get("partitions") or {}
        return sorted(f"{k}: {', '.join(map(str, v))}" for k, v in parts.items()) if isinstance(parts, dict) else []


@dataclass(frozen=True)
class _Plan:
    index: int
    port: int
    dist_port: int
    management_port: int | None


def _pick(preferred: list[int], used: set[int]) -> int:
    """A free port (the first free of ``preferred``), remembered in ``used``."""
    port = pick_free_port(preferred, used)
    used.add(port)
    return port


def _each(call: Callable[[Runner], object], runners: list[Runner]) -> None:
    """``call`` on every runner at once (rabbitmqctl calls cost ~0.4 s each, mostly Erlang's start)."""
    with ThreadPoolExecutor(max_workers=max(1, len(runners))) as pool:
        list(pool.map(call, runners))


def _prefixed(say: Progress, index: int) -> Progress:
    return lambda msg: say(f"node {index}: {msg}")
