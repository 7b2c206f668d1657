"""The management API client against a real node with the management plugin: each failure a
user can meet is the documented exit code, with the way out in the hint; no password shown."""

from __future__ import annotations

import pytest

from celeryctl.broker import ManagementUrl
from celeryctl.errors import CeleryctlError, ExitCode
from celeryctl.rabbitmq.api import ManagementApi, api_path, resolve_api
from celeryctl.rabbitmq.node import pick_free_port
from celeryctl.settings import load_settings
from tests.conftest import RabbitNode


def _api(url: str, user: str = "guest", password: str = "guest") -> ManagementApi:
    return ManagementApi(ManagementUrl.parse(url), user, password, timeout=3)


def _error(call: object) -> CeleryctlError:
    with pytest.raises(CeleryctlError) as info:
        call()  # type: ignore[operator]
    return info.value


def test_reads_what_the_node_has(mgmt_rabbit: RabbitNode) -> None:
    api = _api(mgmt_rabbit.management_url)
    assert api.overview()["rabbitmq_version"] == mgmt_rabbit.version
    assert "administrator" in api.whoami()["tags"]
    assert api.alarms() == []
    assert [n["name"] for n in api.nodes()] == [mgmt_rabbit.name]
    assert api.get(api_path("users", "no-such-user"), missing_ok=True) is None


def test_failures_are_exit_codes_with_a_hint(mgmt_rabbit: RabbitNode) -> None:
    wrong = _error(lambda: _api(mgmt_rabbit.management_url, password="not-the-password").whoami())
    assert wrong.exit_code == ExitCode.ACCESS_REFUSED and "refused the login of 'guest'" in wrong.message
    assert "not-the-password" not in f"{wrong.message} {wrong.hint} {wrong.details}"

    closed = f"http://127.0.0.1:{pick_free_port([], set())}/"
    refused = _error(lambda: _api(closed).overview())
    assert refused.exit_code == ExitCode.UNREACHABLE and "connection refused" in refused.message
    assert "--management" in (refused.hint or "")

    amqp_port = _error(lambda: _api(f"http://127.0.0.1:{mgmt_rabbit.port}/").overview())
    assert amqp_port.exit_code == ExitCode.UNREACHABLE and "AMQP port" in amqp_port.message


def test_a_user_without_the_tag_is_told_which_tag(mgmt_rabbit: RabbitNode) -> None:
    runner = mgmt_rabbit.runner()
    runner.run("add_user", "--", "api-no-admin", stdin="pw-no-admin\n", secrets=["pw-no-admin"])
    try:
        runner.run("set_user_tags", "--", "api-no-admin", "management")
        denied = _error(lambda: _api(mgmt_rabbit.management_url, "api-no-admin", "pw-no-admin").get("api/definitions"))
        assert denied.exit_code == ExitCode.PERMISSION
        assert "'administrator' tag" in denied.message and denied.details["needs_tag"] == "administrator"
    finally:
        runner.run("delete_user", "--", "api-no-admin", check=False)


def test_who_logs_in(mgmt_rabbit: RabbitNode) -> None:
    base = mgmt_rabbit.management_url
    env = {"CELERYCTL_MANAGEMENT_URL": base.replace("http://", "http://admin:s3cret@")}
    api = resolve_api(load_settings({}, env=env), "amqp://celery:other@127.0.0.1:5672/celery")
    assert api is not None and (api.user, api.secrets) == ("admin", ["s3cret"])
    # No user in the management URL: the broker URL's user and password.
    api = resolve_api(load_settings({"management_url": base}, env={}), "amqp://celery:pw@127.0.0.1:5672/celery")
    assert api is not None and (api.user, api.secrets, api.source) == ("celery", ["pw"], "flag --api")
    # Another user named in the flag: its password is not the broker URL's.
    flag_user = load_settings({"management_url": base.replace("http://", "http://admin@")}, env={})
    missing = _error(lambda: resolve_api(flag_user, "amqp://celery:pw@127.0.0.1:5672/celery"))
    assert missing.exit_code == ExitCode.USAGE and "--api-password-stdin" in (missing.hint or "")
    assert resolve_api(flag_user, "amqp://celery:pw@127.0.0.1:5672/celery", password="given").secrets == ["given"]  # type: ignore[union-attr]


def test_a_password_in_the_api_flag_is_refused() -> None:
    refused = _error(lambda: load_settings({"management_url": "http://guest:guest@127.0.0.1:15672/"}, env={}))
    assert refused.exit_code == ExitCode.USAGE and "holds a password" in refused.message
    assert "guest:guest" not in f"{refused.message} {refused.hint}"
