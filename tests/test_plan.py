"""The planner is pure: desired state vs a hand-made State, no node, no runner."""

from __future__ import annotations

import pytest

from celeryctl.errors import UsageError
from celeryctl.rabbitmq.definitions import SHA256, State, UserState, hash_password, password_matches
from celeryctl.rabbitmq.plan import Request, expected_access, plan_delete, plan_setup


def actions(plan: object) -> dict[str, str]:
    return {i.item: i.action for i in plan.items}  # type: ignore[attr-defined]


def test_nothing_there_creates_everything_in_one_import() -> None:
    plan = plan_setup(Request(user="u", vhost="v", tags=["management"]), State(definitions=True))
    assert actions(plan) == {
        "user": "create",
        "password": "create",
        "vhost": "create",
        "tags": "create",
        "permissions": "create",
    }
    assert [s.name for s in plan.steps] == ["import_definitions"]
    assert plan.password_generated and plan.password
    doc = plan.steps[0].stdin_doc
    assert doc is not None
    assert doc["vhosts"] == [{"name": "v"}]
    assert doc["permissions"] == [{"user": "u", "vhost": "v", "configure": ".*", "write": ".*", "read": ".*"}]
    (user,) = doc["users"]
    assert user["tags"] == ["management"] and user["hashing_algorithm"] == SHA256
    assert password_matches(user["password_hash"], SHA256, plan.password) is True
    assert plan.password not in str(doc)  # the hash goes to the node, never the password


def test_the_same_request_again_changes_nothing() -> None:
    pw = "s3cret-pw"
    state = State(
        users={"u": UserState("u", [], hash_password(pw), SHA256)},
        vhosts={"v"},
        permissions={("u", "v"): (".*", ".*", ".*")},
        definitions=True,
    )
    plan = plan_setup(Request(user="u", vhost="v", password=pw), state)
    assert not plan.changed and plan.steps == []
    assert actions(plan)["password"] == "unchanged" and plan.password == pw


def test_a_kept_password_is_known_only_when_the_settings_hold_the_right_one() -> None:
    state = State(users={"u": UserState("u", ["a"], hash_password("right"), SHA256)}, vhosts={"v"}, definitions=True)
    assert plan_setup(Request(user="u", vhost="v"), state, known_password="right").password == "right"
    assert plan_setup(Request(user="u", vhost="v"), state, known_password="wrong").password is None
    plan = plan_setup(Request(user="u", vhost="v"), state)
    assert actions(plan) == {
        "user": "unchanged",
        "password": "unchanged",
        "vhost": "unchanged",
        "tags": "unchanged",
        "permissions": "create",
    }
    doc = plan.steps[0].stdin_doc
    assert doc is not None and "users" not in doc  # only the permissions change


def test_new_tags_on_a_kept_password_send_the_current_hash_back() -> None:
    current = hash_password("right")
    state = State(users={"u": UserState("u", ["a"], current, SHA256)}, vhosts={"v"}, definitions=True)
    plan = plan_setup(Request(user="u", vhost="v", tags=["b"]), state)
    assert actions(plan)["tags"] == "update" and actions(plan)["password"] == "unchanged"
    doc = plan.steps[0].stdin_doc
    assert doc is not None
    assert doc["users"] == [{"name": "u", "password_hash": current, "hashing_algorithm": SHA256, "tags": ["b"]}]


def test_list_reads_get_per_command_writes_in_two_waves() -> None:
    plan = plan_setup(Request(user="u", vhost="v", tags=["t"]), State())
    waves = {s.name: s.wave for s in plan.steps}
    assert waves == {"add_user": 1, "add_vhost": 1, "set_user_tags": 2, "set_permissions": 2}
    assert next(s for s in plan.steps if s.name == "add_user").stdin_password


def test_delete_plans_only_what_exists() -> None:
    plan = plan_delete("u", "v", State(users={"u": UserState("u", [])}))
    assert actions(plan) == {"user": "delete", "vhost": "unchanged"}
    assert [s.name for s in plan.steps] == ["delete_user"]


def test_expected_access_follows_the_regexes() -> None:
    assert expected_access(Request(configure="", write="^amq", read="^celeryctl")) == {
        "configure": False,
        "write": True,
        "read": True,
    }


@pytest.mark.parametrize(
    "request_",
    [Request(user=""), Request(vhost="a\nb"), Request(tags=["a b"]), Request(read="("), Request(password=" x")],
)
def test_bad_requests_are_usage_errors(request_: Request) -> None:
    with pytest.raises(UsageError):
        request_.validate()
