"""The one home of broker access (a package: ``url``, ``access``, ``queues``; import from here).

* :class:`BrokerUrl` — a broker URL parsed once: scheme, hosts (a list: Celery's ``;``-separated
  failover URLs), credentials, vhost, its masked form, whether it is on this machine and whether
  it is celeryctl's own node.  Nothing else in celeryctl splits a URL.
* Reachability — :func:`ensure_reachable` (AMQP handshake, then a login) and :func:`connect`
  (a pika connection) both map failures the same way: exit 6 (unreachable) or 7 (refused).
* Queue depth — :func:`queue_depths` (passive declares on any open connection: ready and
  consumers) and :func:`queue_lister`, the one choice of how to list a broker's queues: the
  management API (any broker, when a management URL is set or celeryctl's node runs the
  plugin), else ``rabbitmqctl`` on celeryctl's node, else passive declares; :func:`list_queues`
  lists once through it.
* :func:`app_queue_names` — the queues a Celery app sends to.

This package imports neither celery, kombu nor pika at module level (``--help`` stays fast).
"""

from __future__ import annotations

from celeryctl.broker.access import (
    CREDENTIALS_HINT,
    START_HINT,
    WAIT_HINT,
    access_error,
    close_quietly,
    connect,
    ensure_reachable,
    own_management_url,
    own_node,
    own_node_runner,
)
from celeryctl.broker.queues import (
    QueueDepth,
    QueueLister,
    QueueReport,
    app_queue_names,
    is_internal_queue,
    list_queues,
    queue_depth,
    queue_depths,
    queue_lister,
    queues_via_amqp,
    queues_via_api,
    queues_via_ctl,
)
from celeryctl.broker.url import (
    DEFAULT_PORT,
    DEFAULT_PORTS,
    LOOPBACK_NAMES,
    MANAGEMENT_PORT,
    MANAGEMENT_URL_HINT,
    SCHEMES,
    URL_HINT,
    BrokerUrl,
    Host,
    ManagementUrl,
    build_amqp_url,
    first_url,
    host_problem,
    is_loopback,
    is_this_machine,
    mask_url,
    parse,
    url_password,
    url_user,
    with_userinfo,
)

__all__ = [
    "CREDENTIALS_HINT",
    "DEFAULT_PORT",
    "DEFAULT_PORTS",
    "LOOPBACK_NAMES",
    "MANAGEMENT_PORT",
    "MANAGEMENT_URL_HINT",
    "SCHEMES",
    "START_HINT",
    "URL_HINT",
    "WAIT_HINT",
    "BrokerUrl",
    "Host",
    "ManagementUrl",
    "QueueDepth",
    "QueueLister",
    "QueueReport",
    "access_error",
    "app_queue_names",
    "build_amqp_url",
    "close_quietly",
    "connect",
    "ensure_reachable",
    "first_url",
    "host_problem",
    "is_internal_queue",
    "is_loopback",
    "is_this_machine",
    "list_queues",
    "mask_url",
    "own_management_url",
    "own_node",
    "own_node_runner",
    "parse",
    "queue_depth",
    "queue_depths",
    "queue_lister",
    "queues_via_amqp",
    "queues_via_api",
    "queues_via_ctl",
    "url_password",
    "url_user",
    "with_userinfo",
]
