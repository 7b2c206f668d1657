"""Check 13 (and the node's side of check 7): RabbitMQ's tools here, the node running, its alarms.

Asking a node boots an Erlang VM (``rabbitmq-diagnostics``, ~0.5 s), so this runs in a thread
while the network checks run; for a node that is not celeryctl's it first waits to hear whether
an AMQP server answers at all.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celeryctl.doctor.check import FAIL, OK, SKIP, WARN, Check, skip
from celeryctl.errors import CeleryctlError

if TYPE_CHECKING:
    from celeryctl.broker import BrokerUrl
    from celeryctl.doctor.network import NetworkResult
    from celeryctl.rabbitmq.ctl import Runner
    from celeryctl.rabbitmq.node import Node
    from celeryctl.settings import Settings

Done = Callable[..., Check]


@dataclass
class LocalResult:
    check: Check
    alarms: list[Any] | None = None  # None: not asked
    alarms_error: str | None = None


@dataclass
class NodeToAsk:
    runner: Runner
    who: str
    data: dict[str, Any]


def check_local_node(
    settings: Settings, target: BrokerUrl, tcp_ready: threading.Event, tcp_ok: list[bool], timeout: float
) -> LocalResult:
    """rabbitmqctl present, the node running, and its alarms (rabbitmq-diagnostics)."""
    from celeryctl.rabbitmq.ctl import installed_version

    started = time.monotonic()

    def done(status: str, detail: str, hint: str | None = None, **data: Any) -> Check:
        return Check("local_node", status, time.monotonic() - started, detail, hint, data)

    if not target.on_this_machine:
        return LocalResult(skip("local_node", f"the broker ({target.host}) is not on this machine"))
    bin_dir = settings.bin_dir()
    if bin_dir is None:
        return LocalResult(
            done(WARN, "rabbitmqctl is not installed here", "install RabbitMQ's tools: celeryctl broker install")
        )
    tools = f"rabbitmqctl {installed_version(bin_dir) or ''} in {bin_dir}".replace("  ", " ")
    node = _node_to_ask(settings, target, bin_dir, tools, done, tcp_ready, tcp_ok, timeout)
    if isinstance(node, LocalResult):
        return node
    return _ask_alarms(settings, target, node, tools, done, timeout)


def _node_to_ask(
    settings: Settings,
    target: BrokerUrl,
    bin_dir: Path,
    tools: str,
    done: Done,
    tcp_ready: threading.Event,
    tcp_ok: list[bool],
    timeout: float,
) -> NodeToAsk | LocalResult:
    """celeryctl's node when the broker is on its port, else the system's (once AMQP answers)."""
    from celeryctl.rabbitmq.ctl import Runner
    from celeryctl.rabbitmq.node import Node

    node = Node(settings.data_dir / "node", bin_dir=bin_dir)
    # celeryctl's node, or the members of its local cluster that the URL (list) names, in order.
    ports = {h.port for h in target.hosts}
    named = [(m, st) for m in _members(settings, node) if (st := m.read_state()) is not None and st.port in ports]
    if named:
        for member, _state in named:
            info = member.running_info()
            if info is not None and len(named) > 1:
                # The cluster check asks this member (cluster_status names every member's alarms):
                # one Erlang VM fewer on doctor's clock.
                return LocalResult(
                    done(
                        OK,
                        f"{tools}; celeryctl's node {info.name} (pid {info.pid}) is running, "
                        f"one of {len(named)} cluster members (see cluster members)",
                        node=info.name,
                        pid=info.pid,
                        celeryctl_node=True,
                        cluster=True,
                        bin_dir=str(bin_dir),
                    )
                )
            if info is not None:
                return NodeToAsk(
                    member.runner(info),
                    f"celeryctl's node {info.name} (pid {info.pid})",
                    {"node": info.name, "pid": info.pid, "celeryctl_node": True, "bin_dir": str(bin_dir)},
                )
        first, state = named[0]
        what = f"celeryctl's node {state.name}" if len(named) == 1 else f"none of celeryctl's {len(named)} nodes"
        return LocalResult(
            done(
                FAIL,
                f"{tools}; {what} ({first.dir}) is not running" if len(named) == 1 else f"{tools}; {what} is running",
                "start it: celeryctl broker start",
                node=state.name,
                running=False,
                data_dir=str(first.dir),
            )
        )
    tcp_ready.wait(timeout + 1.0)
    if not (tcp_ok and tcp_ok[0]):
        return LocalResult(
            done(
                SKIP,
                f"{tools}; no AMQP server answers on port {target.port} (celeryctl's node in {node.dir} is not on it)",
                node=settings.node,
                running=False,
            )
        )
    return NodeToAsk(
        Runner(bin_dir=bin_dir, node=settings.node, timeout=max(1.0, timeout)),
        f"node {settings.node or '(system default)'}",
        {"node": settings.node, "celeryctl_node": False, "bin_dir": str(bin_dir)},
    )


def _members(settings: Settings, node: Node) -> list[Node]:
    """celeryctl's local cluster's members (member 1 is ``node``'s directory)."""
    try:
        return settings.local_cluster().members
    except CeleryctlError:
        return [node]


def _ask_alarms(
    settings: Settings, target: BrokerUrl, node: NodeToAsk, tools: str, done: Done, timeout: float
) -> LocalResult:
    data = node.data
    try:
        doc = node.runner.json("-q", "alarms", tool="rabbitmq-diagnostics", timeout=max(1.5, timeout))
    except CeleryctlError as exc:
        data["error"] = exc.message
        if data.get("celeryctl_node"):
            return LocalResult(done(FAIL, f"{tools}; {node.who} does not answer: {exc.message}", exc.hint, **data))
        # A system node we may not talk to (its cookie belongs to another user), or a broker in a
        # container: AMQP works, so this is not a fault of the setup, only a limit of what doctor sees.
        why = {
            "PermissionDeniedError": "its Erlang cookie is not ours (run doctor as the node's user to ask it)",
            "UnreachableError": "no node of that name runs here (a container, or another tool's node?)",
        }.get(type(exc).__name__, exc.message)
        name = settings.node or "rabbit@" + socket.gethostname().split(".")[0]
        return LocalResult(
            done(OK, f"{tools}; port {target.port} accepts TCP; rabbitmq-diagnostics cannot ask {name}: {why}", **data),
            alarms_error=exc.message,
        )
    if isinstance(doc, dict):  # 3.10: {"local": [...], "global": [...]}; others: {"alarms": [...]}
        alarms = list(doc.get("local") or []) + list(doc.get("global") or []) + list(doc.get("alarms") or [])
    else:
        alarms = list(doc or [])
    data["alarms"] = alarms
    return LocalResult(done(OK, f"{tools}; {node.who} is running", **data), alarms=list(alarms or []))


def alarms_check(
    net: NetworkResult | None,
    local: LocalResult | None,
    api_alarms: list[dict[str, Any]] | None = None,
    source: str = "the management API reports",
) -> Check:
    """Check 7: a blocked connection fails; the alarms per node of the management API (any
    broker) or of a local cluster's ``cluster_status`` (``source`` says which) and, on a local
    node, rabbitmq-diagnostics' are asked too."""
    access = net.access if net else None
    if access is None:
        return skip("alarms", "not connected to the broker")
    named_alarms = api_alarms or (local.alarms if local is not None else None) or []
    if access.kind == "blocked" or access.blocked:
        named = f" ({', '.join(_alarm_name(a) for a in named_alarms)})" if named_alarms else ""
        return Check(
            "alarms",
            FAIL,
            net.blocked_seconds if net else 0.0,
            f"the broker blocked the connection: a memory or disk alarm is on, publishing stops{named}",
            "free disk space or memory on the broker host (rabbitmq-diagnostics alarms shows which)",
            {"blocked": True, "alarms": named_alarms or None},
        )
    if named_alarms:
        names = ", ".join(_alarm_name(a) for a in named_alarms)
        who = source if api_alarms else "the node reports"
        return Check(
            "alarms",
            FAIL,
            local.check.seconds if local is not None and not api_alarms else 0.0,
            f"{who} alarms: {names}",
            "free disk space or memory on the broker host; publishers are blocked until it clears",
            {"blocked": False, "alarms": named_alarms},
        )
    if access.kind not in (None, "permissions") and not access.ok:
        return skip("alarms", "not logged in")
    asked = local is not None and local.alarms is not None
    if api_alarms is not None:
        detail = f"no alarms ({'management API' if 'API' in source else 'every member'} asked)"
    else:
        detail = "no alarms (node asked)" if asked else "connection not blocked"
        if local is not None and local.alarms_error:
            detail += " (rabbitmq-diagnostics could not ask the node)"
    return Check(
        "alarms",
        OK,
        local.check.seconds if asked and local and api_alarms is None else 0.0,
        detail,
        data={"blocked": False, "alarms": local.alarms if asked and local else api_alarms},
    )


def _alarm_name(alarm: Any) -> str:
    if isinstance(alarm, dict):
        name = str(alarm.get("resource") or alarm.get("type") or alarm)
        return f"{name} on {alarm['node']}" if alarm.get("node") else name
    return str(alarm)
