"""The management HTTP API: the second path to a broker, beside :mod:`celeryctl.rabbitmq.ctl`.

rabbitmqctl needs the broker's own machine and its Erlang cookie; the management plugin's
API (port 15672) reaches a broker on another host, in a container or run as a service.  This
module is the ONE place that speaks HTTP to it, the way ``ctl.py`` is the one place that runs
rabbitmqctl: :class:`ManagementApi` sends the requests, maps every failure to celeryctl's exit
codes, and names the few reads several commands share.  :func:`resolve_api` decides which API
(if any) a command talks to, and as whom.

Failures, as RabbitMQ 3.10 answers them (measured):

=====================================================  ==========================================
connection refused, DNS, timeout, not HTTP             exit 6 (:class:`UnreachableError`)
401 ``Login failed``                                   exit 7 (:class:`AccessRefusedError`)
401 ``User not authorised to access virtual host``     exit 7
401 ``Not administrator user`` (``management``,        exit 5 (:class:`PermissionDeniedError`),
``monitor``): the user lacks the tag                   naming the tag to add
404 on a read that may miss                            ``None``
anything else                                          exit 1 (:class:`ApiError`), with the reason
=====================================================  ==========================================

``requests`` is imported when the first request is sent, never at module level: ``--help``
stays fast.  Credentials go in the ``Authorization`` header, never in a URL that an error
message could repeat.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from celeryctl.broker.url import MANAGEMENT_URL_HINT, ManagementUrl, parse
from celeryctl.errors import (
    AccessRefusedError,
    ApiError,
    NotInstalledError,
    PermissionDeniedError,
    UnreachableError,
    UsageError,
)

if TYPE_CHECKING:
    from celeryctl.broker.url import BrokerUrl
    from celeryctl.settings import Settings

DEFAULT_TIMEOUT = 5.0
#: The source of a management URL found by itself: celeryctl's node runs the plugin.
OWN_NODE = "celeryctl node"
#: The tag a "Not ... user" refusal asks for (RabbitMQ's reason text -> the user tag).
_TAG_OF_REASON = {
    "not administrator user": "administrator",
    "not monitor user": "monitoring",
    "not management user": "management",
    "not policymaker user": "policymaker",
}


def api_path(*segments: str) -> str:
    """``api/users/NAME``: every segment percent-encoded (the vhost ``/`` is ``%2F``)."""
    return "api/" + "/".join(quote(s, safe="") for s in segments)


class ManagementApi:
    """A management API, logged in as one user.  Every method raises celeryctl's errors."""

    def __init__(
        self,
        url: ManagementUrl,
        user: str,
        password: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        source: str = "",
    ) -> None:
        self.url = url
        self.user = user
        self._password = password
        self.timeout = timeout
        self.source = source  # where the URL came from: "flag --api", "env ...", "celeryctl node"
        self._session: Any = None

    def __repr__(self) -> str:
        return f"ManagementApi({self.url.base!r}, user={self.user!r})"

    @property
    def description(self) -> str:
        return f"the management API at {self.url.base}"

    @property
    def secrets(self) -> list[str]:
        """What must never be printed (for redaction in callers that echo bodies)."""
        return [self._password]

    # ----------------------------------------------------------------------- transport

    def _open(self) -> Any:
        if self._session is None:
            try:
                import requests
            except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
                raise NotInstalledError(
                    "the management API needs the 'requests' package", "pip install requests"
                ) from None
            session = requests.Session()
            session.auth = (self.user, self._password)
            session.headers.update({"Accept": "application/json", "User-Agent": "celeryctl"})
            self._session = session
        return self._session

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        missing_ok: bool = False,
        accept: tuple[int, ...] = (),
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request; the decoded JSON answer (None for an empty one, or a 404 with
        ``missing_ok``).  Statuses in ``accept`` are answers, not errors (health checks: 503)."""
        import requests.exceptions as rex

        session = self._open()
        try:
            response = session.request(
                method, self.url.base + path, json=body, params=params, timeout=self.timeout, allow_redirects=False
            )
        except rex.RequestException as exc:
            raise self._unreachable(exc) from None
        status = response.status_code
        if status == 404 and missing_ok:
            return None
        if status >= 300 and status not in accept:
            raise self._refused(method, path, status, _reason(response))
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise UnreachableError(
                f"{self.description} did not answer with JSON ({method} {path}: HTTP {status})",
                "is it the management port? (AMQP is on 5672, the management API on 15672); " + MANAGEMENT_URL_HINT,
                details={"kind": "not_api", "status": status},
            ) from None

    def get(self, path: str, *, missing_ok: bool = False, params: Mapping[str, str] | None = None) -> Any:
        return self.request("GET", path, missing_ok=missing_ok, params=params)

    def put(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str, *, missing_ok: bool = True) -> Any:
        return self.request("DELETE", path, missing_ok=missing_ok)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # ----------------------------------------------------------------------- errors

    def _unreachable(self, exc: Exception) -> UnreachableError:
        import requests.exceptions as rex

        text = str(exc)
        if isinstance(exc, rex.Timeout):
            kind, why = "timeout", f"no answer within {self.timeout:g} s"
        elif isinstance(exc, rex.SSLError):
            kind, why = "tls", "the TLS handshake failed"
        elif "Connection refused" in text or "Errno 111" in text:
            kind, why = "refused", "connection refused"
        elif "Name or service not known" in text or "NameResolution" in text or "nodename nor servname" in text:
            kind, why = "dns", f"cannot resolve {self.url.host}"
        elif any(t in text for t in ("RemoteDisconnected", "BadStatusLine", "Connection reset", "Connection aborted")):
            kind, why = "not_api", "the port did not answer HTTP (is it the AMQP port? the API is usually on 15672)"
        else:
            kind, why = "network", text.split("(Caused by ", 1)[-1].rstrip(")")[:200]
        return UnreachableError(
            f"cannot reach {self.description}: {why}",
            "is the management plugin enabled, on that port? (celeryctl broker start --management; "
            "rabbitmq-plugins enable rabbitmq_management); " + MANAGEMENT_URL_HINT,
            details={"kind": kind, "management_url": self.url.base},
        )

    def _refused(self, method: str, path: str, status: int, reason: str) -> Exception:
        details: dict[str, object] = {"status": status, "method": method, "path": path, "reason": reason}
        lowered = reason.lower()
        tag = next((t for r, t in _TAG_OF_REASON.items() if r in lowered), None)
        if status in (401, 403) and tag is not None:
            details["needs_tag"] = tag
            return PermissionDeniedError(
                f"{self.description}: user '{self.user}' may not {method} /{path}: it needs the '{tag}' tag",
                f"give '{self.user}' the tag (rabbitmqctl set_user_tags {self.user} {tag}, keeping its other tags), "
                "or use an administrator's credentials",
                details=details,
            )
        if status == 401 and "virtual host" in lowered:
            details["kind"] = "vhost"
            return AccessRefusedError(
                f"{self.description}: user '{self.user}' may not access that vhost ({reason})",
                f"grant '{self.user}' permissions on the vhost, or use an administrator's credentials",
                details=details,
            )
        if status == 401:
            details["kind"] = "auth"
            return AccessRefusedError(
                f"{self.description} refused the login of '{self.user}' ({reason or 'HTTP 401'})",
                "check the user and password: the management URL's (CELERYCTL_MANAGEMENT_URL, the settings file), "
                "--api-password-stdin, or the broker URL's",
                details=details,
            )
        if status == 403:
            return PermissionDeniedError(
                f"{self.description}: {method} /{path} is forbidden for '{self.user}' ({reason or 'HTTP 403'})",
                "use an administrator's credentials",
                details=details,
            )
        return ApiError(
            f"{self.description}: {method} /{path} failed: HTTP {status} {reason}".rstrip(),
            "run with CELERYCTL_DEBUG=1 for details; check the broker's log",
            details=details,
        )

    # ----------------------------------------------------------------------- reads several commands share

    def overview(self) -> dict[str, Any]:
        """``/api/overview``: rabbitmq_version, cluster_name, node, object and message totals."""
        return self.get("api/overview") or {}

    def whoami(self) -> dict[str, Any]:
        """``/api/whoami``: the logged-in user's name and tags (a list; a string on old brokers)."""
        return self.get("api/whoami") or {}

    def alarms(self) -> list[dict[str, Any]]:
        """The cluster's resource alarms (memory, disk), each with its node; [] when none."""
        doc = self.request("GET", "api/health/checks/alarms", accept=(503,)) or {}
        if doc.get("status") == "ok":
            return []
        return list(doc.get("alarms") or [{"node": None, "resource": doc.get("reason", "unknown")}])

    def nodes(self) -> list[dict[str, Any]]:
        """Cluster members (``running``, ``partitions``, ``mem_alarm``, ``disk_free_alarm``, ...)."""
        return list(self.get("api/nodes") or [])

    def queues(self, vhost: str, columns: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Every queue of ``vhost``; ``columns`` narrows the answer (cheaper on big brokers)."""
        params = {"columns": ",".join(columns)} if columns else None
        return list(self.get(api_path("queues", vhost), params=params) or [])


def _reason(response: Any) -> str:
    try:
        doc = response.json()
    except ValueError:
        return (response.text or "").strip()[:200]
    if isinstance(doc, dict):
        return str(doc.get("reason") or doc.get("error") or "")
    return ""


# --------------------------------------------------------------------------- which API, as whom


def management_url_of(settings: Settings, broker: str | BrokerUrl | None = None) -> tuple[ManagementUrl, str] | None:
    """The management URL to use and where it came from: the setting (``--api``,
    CELERYCTL_MANAGEMENT_URL, the file), else celeryctl's own node when ``broker`` is it and
    runs the management plugin; None when neither."""
    if settings.management_url:
        source = settings.sources.get("management_url", "")
        return ManagementUrl.parse(settings.management_url, source), source
    if broker is not None:
        from celeryctl.broker.access import own_management_url

        own = own_management_url(settings, broker)
        if own:
            return ManagementUrl.parse(own, OWN_NODE), OWN_NODE
    return None


def resolve_api(
    settings: Settings,
    broker: str | BrokerUrl | None = None,
    *,
    password: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> ManagementApi | None:
    """The management API a command talks to (see :func:`management_url_of`), or None.

    As whom: the management URL's user (``http://admin@host:15672/``), else the broker URL's.
    The password: the management URL's (from the environment or the settings file: a flag
    cannot carry one), else ``password`` (``--api-password-stdin``), else the broker URL's
    when the user is the broker URL's.
    """
    found = management_url_of(settings, broker)
    if found is None:
        return None
    url, source = found
    target = parse(broker) if broker is not None else None
    user = url.user or (target.user if target is not None else None)
    if not user:
        raise UsageError(
            f"no user for {url.masked} ({source})",
            "name one in the URL (http://admin@host:15672/) and give its password with --api-password-stdin "
            "or in CELERYCTL_MANAGEMENT_URL",
        )
    secret = url.password if url.password is not None else password
    if secret is None and target is not None and target.user == user:
        secret = target.password
    if secret is None:
        raise UsageError(
            f"no password for '{user}' on {url.masked} ({source})",
            "pipe it with --api-password-stdin, or put the whole URL in CELERYCTL_MANAGEMENT_URL "
            "or the settings file (mode 0600); never on the command line",
        )
    return ManagementApi(url, user, secret, timeout=timeout, source=source)
