"""celeryctl setup-broker through the management HTTP API, against the session's ``mgmt_rabbit`` node.

The lifecycle (create, identical re-run, new tags, new password, delete) runs with no rabbitmqctl
to be found (PATH without /usr/sbin, CELERYCTL_RABBITMQ_BIN_DIR an empty directory), each step
checked by an AMQP login and by reading the user back through the API as guest.  One test
compares the ``--dry-run --json`` plans of both paths on the same node; the failures (wrong admin
password, closed port, an admin without the administrator tag) change nothing.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celeryctl.broker import ManagementUrl
from celeryctl.errors import ApiError
from celeryctl.probe import check_access
from celeryctl.rabbitmq.api import ManagementApi, api_path
from celeryctl.rabbitmq.apply import apply_plan
from celeryctl.rabbitmq.definitions import SHA256, hash_password, password_matches, read_state
from celeryctl.rabbitmq.plan import Request, plan_setup
from tests.conftest import CliResult, CliRun, RabbitNode
from tests.faults.test_security import CmdlineScanner


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def guest(mgmt_rabbit: RabbitNode) -> Iterator[ManagementApi]:
    """The node's API as guest: the independent reader (and the fixtures' writer)."""
    api = ManagementApi(ManagementUrl.parse(mgmt_rabbit.management_url, "test"), "guest", "guest")
    yield api
    api.close()


@pytest.fixture(scope="module")
def admin(mgmt_rabbit: RabbitNode, guest: ManagementApi) -> Iterator[tuple[str, str]]:
    """A dedicated administrator with a distinctive password (so a scan of argv can look for it)."""
    name, password = unique("adm"), "adm-" + uuid.uuid4().hex
    put_user(guest, name, password, "administrator")
    yield name, password
    guest.delete(api_path("users", name))


def put_user(api: ManagementApi, name: str, password: str, tags: str) -> None:
    api.put(
        api_path("users", name), {"password_hash": hash_password(password), "hashing_algorithm": SHA256, "tags": tags}
    )


def api_url(node: RabbitNode, user: str = "", password: str = "") -> str:
    cred = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return node.management_url.replace("http://", f"http://{cred}")


def amqp_url(node: RabbitNode, user: str, password: str, vhost: str) -> str:
    return f"amqp://{user}:{password}@127.0.0.1:{node.port}/{vhost}"


def items(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["item"]: i for i in doc["items"]}


def succeeded(result: CliResult) -> dict[str, Any]:
    assert result.returncode == 0, result.output
    assert "Traceback" not in result.output
    doc = result.json()
    assert doc["ok"] is True and doc["via"] == "api"
    return doc


def test_lifecycle_through_the_api_without_rabbitmqctl(
    cli: CliRun, mgmt_rabbit: RabbitNode, guest: ManagementApi, admin: tuple[str, str], tmp_path: Path
) -> None:
    user, vhost, password = unique("apiu"), unique("apiv"), "pw-" + uuid.uuid4().hex
    empty = tmp_path / "no-rabbitmq"
    empty.mkdir()
    env = {
        "CELERYCTL_MANAGEMENT_URL": api_url(mgmt_rabbit, *admin),
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",  # rabbitmqctl is in /usr/sbin
        "CELERYCTL_RABBITMQ_BIN_DIR": str(empty),
    }
    base = ("setup-broker", "--user", user, "--vhost", vhost, "--json")

    # Create: user, vhost, tags and permissions; no password in any process's argv meanwhile.
    with CmdlineScanner(password) as new_scan, CmdlineScanner(admin[1]) as admin_scan:
        created = succeeded(cli(*base, "--tags", "management", "--password-stdin", input=password + "\n", env=env))
    assert new_scan.rounds > 0 and new_scan.leaks == {} and admin_scan.leaks == {}
    assert created["changed"] is True and created["node"] == f"the management API at {mgmt_rabbit.management_url}"
    assert {k: i["action"] for k, i in items(created).items()} == {
        "user": "create",
        "password": "create",
        "vhost": "create",
        "tags": "create",
        "permissions": "create",
    }
    assert items(created)["user"]["steps"] == [f"PUT /api/users/{user}"]
    assert items(created)["permissions"]["steps"] == [f"PUT /api/permissions/{vhost}/{user}"]
    assert created["verification"]["ok"] is True
    assert created["url"] == f"amqp://{user}:****@127.0.0.1:{mgmt_rabbit.port}/{vhost}"  # the AMQP listener
    access = check_access(amqp_url(mgmt_rabbit, user, password, vhost))
    assert access.server is not None and access.configure and access.write and access.read
    stored = guest.get(api_path("users", user))
    assert stored["tags"] == ["management"] and password_matches(
        stored["password_hash"], stored["hashing_algorithm"], password
    )
    assert guest.get(api_path("permissions", vhost, user))["configure"] == ".*"

    # An identical re-run (the password from the saved settings): nothing to do, no write.
    again = succeeded(cli(*base, "--tags", "management", env=env))
    assert again["changed"] is False and again["verification"]["ok"] is True
    assert all(i["action"] == "unchanged" and i["steps"] == [] for i in again["items"])
    assert guest.get(api_path("users", user))["password_hash"] == stored["password_hash"]  # no PUT: same salt

    # New tags: one PUT of the user carrying its current hash back; the password stays.
    tagged = succeeded(cli(*base, "--tags", "monitoring", "--tags", "management", env=env))
    assert tagged["changed"] is True and items(tagged)["tags"]["action"] == "update"
    assert items(tagged)["password"]["action"] == "unchanged" and tagged["verification"]["ok"] is True
    after = guest.get(api_path("users", user))
    assert sorted(after["tags"]) == ["management", "monitoring"]
    assert after["password_hash"] == stored["password_hash"]

    # A new password: the old one is refused, the new one logs in.
    rotated = succeeded(cli(*base, "--rotate-password", "--show-password", env=env))
    assert items(rotated)["password"]["action"] == "update" and rotated["verification"]["ok"] is True
    new_password = rotated["password"]
    assert check_access(amqp_url(mgmt_rabbit, user, password, vhost)).server is None
    assert check_access(amqp_url(mgmt_rabbit, user, new_password, vhost)).server is not None

    # Delete: user and vhost gone.
    deleted = succeeded(cli("setup-broker", "--user", user, "--vhost", vhost, "--delete", "--yes", "--json", env=env))
    assert {k: i["action"] for k, i in items(deleted).items()} == {"user": "delete", "vhost": "delete"}
    assert items(deleted)["vhost"]["steps"] == [f"DELETE /api/vhosts/{vhost}"]
    assert guest.get(api_path("users", user), missing_ok=True) is None
    assert guest.get(api_path("vhosts", vhost), missing_ok=True) is None


def test_same_plan_as_the_rabbitmqctl_path(
    cli: CliRun, mgmt_rabbit: RabbitNode, guest: ManagementApi, admin: tuple[str, str]
) -> None:
    """An existing user with other tags, a new vhost: the plans agree item by item."""
    user, vhost = unique("same"), unique("samev")
    put_user(guest, user, "pw-" + uuid.uuid4().hex, "monitoring")
    try:
        args = ("setup-broker", "--user", user, "--vhost", vhost, "--tags", "management", "--configure", "^x")
        ctl = cli(*args, "--dry-run", "--json", env={"CELERYCTL_DATA_DIR": str(mgmt_rabbit.data_dir)})
        api = cli(*args, "--dry-run", "--json", env={"CELERYCTL_MANAGEMENT_URL": api_url(mgmt_rabbit, *admin)})
        assert ctl.returncode == 0 and api.returncode == 0, ctl.output + api.output
        by_ctl, by_api = ctl.json(), api.json()
        assert by_ctl["via"] == "rabbitmqctl" and by_api["via"] == "api"

        def rows(doc: dict[str, Any]) -> list[tuple[str, str, str | None, str | None]]:
            return [(i["item"], i["action"], i["current"], i["desired"]) for i in doc["items"]]

        assert rows(by_api) == rows(by_ctl)
        assert [i["action"] for i in by_api["items"]] == ["unchanged", "unchanged", "create", "update", "create"]
        assert items(by_ctl)["tags"]["steps"] == ["import_definitions"]
        assert items(by_api)["tags"]["steps"] == [f"PUT /api/users/{user}"]
        assert items(by_api)["vhost"]["steps"] == [f"PUT /api/vhosts/{vhost}"]
        assert guest.get(api_path("vhosts", vhost), missing_ok=True) is None  # dry runs
    finally:
        guest.delete(api_path("users", user))


def test_refusals_change_nothing(
    cli: CliRun, mgmt_rabbit: RabbitNode, guest: ManagementApi, admin: tuple[str, str]
) -> None:
    """Wrong admin password 7, API port closed 6, admin without the administrator tag 5."""
    from celeryctl.rabbitmq.node import pick_free_port

    user, vhost = unique("ref"), unique("refv")
    manager, manager_pw = unique("mgr"), "pw-" + uuid.uuid4().hex
    runner = mgmt_rabbit.runner()
    runner.run("add_user", "--", manager, stdin=manager_pw + "\n", secrets=[manager_pw])
    try:
        runner.run("set_user_tags", "--", manager, "management")
        base = ("setup-broker", "--user", user, "--vhost", vhost, "--json")
        wrong = cli(*base, "--api", api_url(mgmt_rabbit, admin[0]), "--api-password-stdin", input="wrong\n")
        closed_port = pick_free_port([], set())
        closed = cli(*base, env={"CELERYCTL_MANAGEMENT_URL": f"http://guest:guest@127.0.0.1:{closed_port}/"})
        untagged = cli(*base, env={"CELERYCTL_MANAGEMENT_URL": api_url(mgmt_rabbit, manager, manager_pw)})
        both = cli(*base, "--api", mgmt_rabbit.management_url, "--api-password-stdin", "--password-stdin", input="x\n")
        for result, code in ((wrong, 7), (closed, 6), (untagged, 5), (both, 2)):
            assert result.returncode == code, result.output
            assert "Traceback" not in result.output
            assert result.json()["ok"] is False
        assert "refused the login" in wrong.json()["error"]["message"]
        assert closed.json()["error"]["details"]["kind"] == "refused"
        assert "'administrator' tag" in untagged.json()["error"]["message"]
        assert untagged.json()["error"]["details"]["needs_tag"] == "administrator"
        assert "--password-stdin and --api-password-stdin" in both.json()["error"]["message"]
        assert guest.get(api_path("users", user), missing_ok=True) is None
        assert guest.get(api_path("vhosts", vhost), missing_ok=True) is None
        # Without --json: one line and a hint.
        plain = cli(
            "setup-broker", "--user", user, env={"CELERYCTL_MANAGEMENT_URL": api_url(mgmt_rabbit, manager, manager_pw)}
        )
        assert plain.returncode == 5 and "Traceback" not in plain.output
        assert plain.stderr.count("error:") == 1 and "hint:" in plain.stderr and "administrator" in plain.stderr
    finally:
        runner.run("delete_user", "--", manager)


class FailingPermissions(ManagementApi):
    """The real API, except that writing permissions fails (a broker-side failure on demand)."""

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        if method == "PUT" and path.startswith("api/permissions/"):
            raise ApiError(f"{self.description}: PUT /{path} failed: HTTP 500 simulated", "check the broker's log")
        return super().request(method, path, body, **kwargs)


def test_a_failed_request_is_read_back(mgmt_rabbit: RabbitNode, guest: ManagementApi) -> None:
    """User and vhost written, permissions refused: the error says which items the broker has."""
    request = Request(user=unique("half"), vhost=unique("halfv"), password="pw-" + uuid.uuid4().hex)
    api = FailingPermissions(guest.url, "guest", "guest")
    try:
        plan = plan_setup(request, read_state(api, request))
        assert [s.name for s in plan.steps] == [
            f"PUT /api/users/{request.user}",
            f"PUT /api/vhosts/{request.vhost}",
            f"PUT /api/permissions/{request.vhost}/{request.user}",
        ]
        assert all("password" not in (s.body or {}) for s in plan.steps)  # a hash, never the password
        with pytest.raises(ApiError) as caught:
            apply_plan(api, plan)
        assert "(applied: user, password, vhost, tags; not applied: permissions)" in caught.value.message
        assert {i["item"]: i["status"] for i in caught.value.details["items"]}["permissions"] == "not applied"
        assert read_state(guest, request).users[request.user].tags == []
    finally:
        api.close()
        guest.delete(api_path("users", request.user))
        guest.delete(api_path("vhosts", request.vhost))
