"""celeryctl setup-broker against the session's real RabbitMQ node.

A recording shim (``rabbitmq-server`` + ``rabbitmqctl`` scripts that log their argv and exec the
real ones, pinned with CELERYCTL_RABBITMQ_BIN_DIR) proves which calls were made and that no
password is in any argv.  Fakes only stand in for failures the real node cannot produce on demand.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from celeryctl.broker import url_password
from celeryctl.probe import check_access
from celeryctl.rabbitmq.apply import apply_plan
from celeryctl.rabbitmq.ctl import find_bin_dir
from celeryctl.rabbitmq.definitions import password_matches, read_state, read_state_parallel
from celeryctl.rabbitmq.plan import Request, expected_access, plan_setup
from celeryctl.settings import load_settings
from tests.conftest import RABBITMQ_TOOLS, CliResult, CliRun, RabbitNode, TerminalRun, VhostFactory, fake_bin

WRITE_VERBS = (
    "add_user",
    "change_password",
    "add_vhost",
    "set_user_tags",
    "set_permissions",
    "delete_user",
    "delete_vhost",
    "clear_permissions",
    "import_definitions",
)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# A filter the partial-import shim pipes the document through: the node then applies users and
# vhosts but never sees the permissions, as when a real import fails at its permissions step.
DROP_PERMISSIONS = "import json, sys; d = json.load(sys.stdin); d.pop('permissions', None); json.dump(d, sys.stdout)"


class Shim:
    """A bin dir whose tools append their argv to ``log`` and then run the real ones.

    ``import_definitions`` documents (stdin) are appended to ``stdin_log``, one per line.
    ``fail`` maps verbs to exit codes the shim returns instead of running the real tool;
    ``partial_import`` runs the real import without its permissions and then fails.
    """

    def __init__(
        self,
        directory: Path,
        fail_on: str | None = None,
        fail_code: int = 70,
        *,
        fail: dict[str, int] | None = None,
        partial_import: bool = False,
    ) -> None:
        import shlex
        import sys

        real = find_bin_dir({k: v for k, v in os.environ.items() if k != "CELERYCTL_RABBITMQ_BIN_DIR"})
        assert real is not None
        self.dir = directory
        self.log = directory / "argv.log"
        self.stdin_log = directory / "stdin.log"
        directory.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")
        self.stdin_log.write_text("")
        failures = dict(fail or {})
        if fail_on:
            failures[fail_on] = fail_code
        bodies = {}
        for tool in RABBITMQ_TOOLS:
            body = ""
            if tool == "rabbitmqctl":
                for verb, code in failures.items():
                    body += (
                        f'case " $* " in *" {verb} "*) '
                        f'echo "Error:" >&2; echo "simulated failure of {verb}" >&2; exit {code};; esac\n'
                    )
                if partial_import:
                    body += (
                        'case " $* " in *" import_definitions "*) '
                        f"{shlex.quote(sys.executable)} -c {shlex.quote(DROP_PERMISSIONS)} "
                        f'| "{real / tool}" "$@" >/dev/null; '
                        'echo "Error:" >&2; echo "simulated failure of the import midway" >&2; exit 65;; esac\n'
                    )
                # Record the import document, then run the real import on it.
                body += (
                    'case " $* " in *" import_definitions "*) '
                    f'tee -a "{self.stdin_log}" | "{real / tool}" "$@"; rc=$?; echo >> "{self.stdin_log}"; '
                    "exit $rc;; esac\n"
                )
            bodies[tool] = f'printf "%s\\n" "{tool} $*" >> "{self.log}"\n{body}exec "{real / tool}" "$@"\n'
        fake_bin(directory, bodies)

    def calls(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.strip()]

    def writes(self) -> list[str]:
        return [c for c in self.calls() if any(f" {verb} " in f" {c} " for verb in WRITE_VERBS)]

    def imports(self) -> list[dict[str, Any]]:
        """The definitions documents the import calls read from stdin."""
        return [json.loads(line) for line in self.stdin_log.read_text().splitlines() if line.strip()]

    def stdin_text(self) -> str:
        return self.stdin_log.read_text()

    def clear(self) -> None:
        self.log.write_text("")
        self.stdin_log.write_text("")


@pytest.fixture
def shim(tmp_path: Path) -> Shim:
    return Shim(tmp_path / "shim")


@pytest.fixture
def env(rabbit: RabbitNode, shim: Shim) -> dict[str, str]:
    """CLI env aiming setup-broker at the session node through the recording shim."""
    return {"CELERYCTL_DATA_DIR": str(rabbit.data_dir), "CELERYCTL_RABBITMQ_BIN_DIR": str(shim.dir)}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path / "work"  # the cli fixture's working directory


def definitions(rabbit: RabbitNode) -> dict[str, Any]:
    raw = rabbit.runner().run("export_definitions", "-", "--format", "json").stdout
    return json.loads(raw)


def snapshot(rabbit: RabbitNode) -> dict[str, Any]:
    """Users (with tags and password hash), vhosts and permissions as the node has them."""
    runner = rabbit.runner()
    users, vhosts = runner.run_parallel([["list_users"], ["list_vhosts"]])
    defs = definitions(rabbit)
    return {
        "users": sorted(json.dumps(u, sort_keys=True) for u in users),
        "vhosts": sorted(json.dumps(v, sort_keys=True) for v in vhosts),
        "hashes": sorted((u["name"], u["password_hash"]) for u in defs["users"]),
        "permissions": sorted(json.dumps(p, sort_keys=True) for p in defs["permissions"]),
    }


def user_of(rabbit: RabbitNode, name: str) -> dict[str, Any] | None:
    return next((u for u in definitions(rabbit)["users"] if u["name"] == name), None)


def perms_of(rabbit: RabbitNode, user: str, vhost: str) -> dict[str, Any] | None:
    return next((p for p in definitions(rabbit)["permissions"] if p["user"] == user and p["vhost"] == vhost), None)


def items(doc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {i["item"]: (i["action"], i["status"]) for i in doc["items"]}


def table_row(text: str, item: str) -> list[str]:
    """The cells of the row of a boxed table (as the human output prints it) whose first cell is ``item``."""
    rows = [[c.strip() for c in line.strip().strip("│").split("│")] for line in text.splitlines() if "│" in line]
    matches = [row for row in rows if row[0] == item]
    assert len(matches) == 1, f"{len(matches)} rows for {item!r} in:\n{text}"
    return matches[0]


def ok_json(result: CliResult) -> dict[str, Any]:
    assert "Traceback" not in result.output, result.output
    assert result.returncode == 0, result.output
    doc = result.json()  # exactly one JSON document on stdout
    assert doc["ok"] is True
    return doc


def error_json(result: CliResult, exit_code: int) -> dict[str, Any]:
    assert "Traceback" not in result.output, result.output
    assert result.returncode == exit_code, result.output
    doc = result.json()
    assert doc["ok"] is False and doc["error"]["exit_code"] == exit_code
    assert doc["error"]["hint"]
    return doc["error"]


# --------------------------------------------------------------------------- the main flow


def test_fresh_setup_then_identical_rerun_changes_nothing(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], shim: Shim, workdir: Path
) -> None:
    user, vhost = unique("u"), unique("v")
    doc = ok_json(cli("setup-broker", "--user", user, "--vhost", vhost, "--json", env=env))
    assert doc["changed"] is True
    assert items(doc) == {
        "user": ("create", "applied"),
        "password": ("create", "applied"),
        "vhost": ("create", "applied"),
        "tags": ("create", "applied"),
        "permissions": ("create", "applied"),
    }
    assert doc["verification"]["ok"] is True
    assert doc["verification"]["access"]["configure"] and doc["verification"]["access"]["read"]
    assert doc["password_generated"] is True and "password" not in doc
    assert "****" in doc["url"] and f"127.0.0.1:{rabbit.port}/{vhost}" in doc["url"]

    # The node has what was asked: permissions .* on that vhost only, no tags.
    assert user_of(rabbit, user)["tags"] == []  # type: ignore[index]
    assert perms_of(rabbit, user, vhost) == {
        "user": user,
        "vhost": vhost,
        "configure": ".*",
        "write": ".*",
        "read": ".*",
    }
    assert [p for p in definitions(rabbit)["permissions"] if p["user"] == user and p["vhost"] != vhost] == []

    # The settings file: mode 0600, holds the URL with the password, and later commands resolve it.
    toml = workdir / "celeryctl.toml"
    assert stat.S_IMODE(toml.stat().st_mode) == 0o600
    settings = load_settings(env={}, cwd=workdir)
    assert settings.broker_url is not None and settings.sources["broker_url"].startswith("file")
    password = url_password(settings.broker_url)
    assert password and len(password) >= 24
    assert check_access(settings.broker_url).ok
    assert password not in doc["url"] and password not in json.dumps(doc)

    first_calls = shim.calls()
    # One read, then every change in ONE import_definitions call holding only what the plan changes,
    # with a salted hash of the password (never the password itself) on stdin.
    assert len(first_calls) == 2 and "export_definitions" in first_calls[0]
    assert shim.writes() == [first_calls[1]] and " import_definitions " in first_calls[1] + " "
    (imported,) = shim.imports()
    assert password not in shim.stdin_text()
    assert set(imported) == {"users", "vhosts", "permissions"}
    (entry,) = imported["users"]
    assert entry["name"] == user and entry["tags"] == []
    assert entry["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert password_matches(entry["password_hash"], entry["hashing_algorithm"], password) is True
    assert imported["vhosts"] == [{"name": vhost}]
    assert imported["permissions"] == [{"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}]
    assert user_of(rabbit, user)["password_hash"] == entry["password_hash"]  # type: ignore[index]
    shim.clear()

    # Identical re-run: one read, no write, everything unchanged, the saved password reused and verified.
    again = cli("setup-broker", "--user", user, "--vhost", vhost, "--json", env=env)
    doc2 = ok_json(again)
    assert doc2["changed"] is False
    assert {a for a, _s in items(doc2).values()} == {"unchanged"}
    assert doc2["verification"]["ok"] is True
    assert doc2["settings_changed"] is False
    assert shim.writes() == []
    assert len(shim.calls()) == 1 and "export_definitions" in shim.calls()[0]

    # The password was in no argv of either run.
    for line in first_calls + shim.calls():
        assert password not in line

    # The human table says so too.
    human = cli("setup-broker", "--user", user, "--vhost", vhost, env=env)
    assert human.returncode == 0, human.output
    assert "nothing to change" in human.stdout and "unchanged" in human.stdout
    assert password not in human.output and "****" in human.stdout


def test_tag_and_permission_change_keeps_a_given_password(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], shim: Shim
) -> None:
    user, vhost, pw = unique("u"), unique("v"), "s3cret-" + uuid.uuid4().hex
    args = ("setup-broker", "--user", user, "--vhost", vhost, "--json", "--password-stdin", "--no-save")
    doc = ok_json(cli(*args, "--tags", "management", env=env, input=pw + "\n"))
    assert doc["changed"] is True and doc["saved_to"] is None
    assert user_of(rabbit, user)["tags"] == ["management"]  # type: ignore[index]
    hash_before = user_of(rabbit, user)["password_hash"]  # type: ignore[index]
    assert pw not in shim.stdin_text()
    shim.clear()

    doc = ok_json(
        cli(*args, "--tags", "monitoring", "--configure", r"^celery\.", "--read", "", env=env, input=pw + "\n")
    )
    assert items(doc) == {
        "user": ("unchanged", "unchanged"),
        "password": ("unchanged", "unchanged"),  # same password: decided from the hash, not rewritten
        "vhost": ("unchanged", "unchanged"),
        "tags": ("update", "applied"),
        "permissions": ("update", "applied"),
    }
    writes = shim.writes()
    assert len(writes) == 1 and "import_definitions" in writes[0] and pw not in writes[0]
    # The import names the user with its CURRENT hash, so the password stays exactly as it was.
    (imported,) = shim.imports()
    assert set(imported) == {"users", "permissions"} and pw not in shim.stdin_text()
    assert imported["users"][0]["password_hash"] == hash_before and imported["users"][0]["tags"] == ["monitoring"]
    assert user_of(rabbit, user)["password_hash"] == hash_before  # type: ignore[index]
    assert user_of(rabbit, user)["tags"] == ["monitoring"]  # type: ignore[index]
    assert perms_of(rabbit, user, vhost) == {
        "user": user,
        "vhost": vhost,
        "configure": r"^celery\.",
        "write": ".*",
        "read": "",
    }
    # Verified as granted: the probe queue may not be declared or read, but publishing works.
    ver = doc["verification"]
    assert ver["ok"] is True
    assert ver["expected"] == {"configure": False, "write": True, "read": False}
    assert ver["access"]["write"] is True

    # --tags '' removes the tags; no --tags leaves them alone.
    doc = ok_json(cli(*args, "--tags", "", "--configure", r"^celery\.", "--read", "", env=env, input=pw))
    assert items(doc)["tags"] == ("update", "applied") and user_of(rabbit, user)["tags"] == []  # type: ignore[index]


def test_rotate_password(cli: CliRun, rabbit: RabbitNode, env: dict[str, str], shim: Shim, workdir: Path) -> None:
    user, vhost = unique("u"), unique("v")
    old_pw = "old-" + uuid.uuid4().hex
    ok_json(
        cli(
            "setup-broker", "--user", user, "--vhost", vhost, "--password-env", "OLD_PW", "--json",
            env={**env, "OLD_PW": old_pw},
        )
    )  # fmt: skip
    old_url = load_settings(env={}, cwd=workdir).broker_url
    assert old_url and url_password(old_url) == old_pw and check_access(old_url).ok
    shim.clear()

    doc = ok_json(
        cli("setup-broker", "--user", user, "--vhost", vhost, "--rotate-password", "--show-password", "--json", env=env)
    )
    assert items(doc)["password"] == ("update", "applied")
    new_pw = doc["password"]
    assert new_pw and new_pw != old_pw and new_pw in doc["url"]
    (write,) = shim.writes()
    assert "import_definitions" in write
    (imported,) = shim.imports()
    assert set(imported) == {"users"}  # only the password changes: a new hash, the same (no) tags
    new_hash = imported["users"][0]["password_hash"]
    assert password_matches(new_hash, "rabbit_password_hashing_sha256", new_pw) is True
    assert user_of(rabbit, user)["password_hash"] == new_hash  # type: ignore[index]
    assert all(new_pw not in c and old_pw not in c for c in shim.calls())
    assert new_pw not in shim.stdin_text() and old_pw not in shim.stdin_text()

    refused = check_access(old_url)
    assert refused.ok is False and refused.kind == "auth"
    new_url = load_settings(env={}, cwd=workdir).broker_url
    assert new_url and url_password(new_url) == new_pw
    assert check_access(new_url).ok


def test_dry_run_leaves_the_broker_exactly_as_it_was(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], shim: Shim, workdir: Path
) -> None:
    user, vhost = unique("u"), unique("v")
    before = snapshot(rabbit)
    # --data-dir (over the isolated CELERYCTL_DATA_DIR) picks the session node too.
    flag_env = {"CELERYCTL_RABBITMQ_BIN_DIR": env["CELERYCTL_RABBITMQ_BIN_DIR"]}
    doc = ok_json(
        cli(
            "setup-broker", "--user", user, "--vhost", vhost, "--dry-run", "--json",
            "--data-dir", str(rabbit.data_dir), env=flag_env,
        )
    )  # fmt: skip
    assert doc["dry_run"] is True and doc["changed"] is True and rabbit.name in doc["node"]
    assert {s for _a, s in items(doc).values()} == {"planned"}
    assert doc["verification"] is None and doc["url"] is None
    human = cli("setup-broker", "--user", user, "--vhost", vhost, "--dry-run", "--tags", "x", env=env)
    assert human.returncode == 0 and "dry run" in human.stdout and "create" in human.stdout
    assert shim.writes() == []
    assert snapshot(rabbit) == before
    assert not (workdir / "celeryctl.toml").exists()

    # An existing user with changes pending: still nothing written.
    ok_json(cli("setup-broker", "--user", user, "--vhost", vhost, "--no-save", "--json", env=env))
    before = snapshot(rabbit)
    shim.clear()
    doc = ok_json(
        cli(
            "setup-broker", "--user", user, "--vhost", vhost, "--tags", "management", "--write", "^x$",
            "--rotate-password", "--dry-run", "--json", env=env,
        )
    )  # fmt: skip
    assert items(doc)["tags"] == ("update", "planned") and items(doc)["password"] == ("update", "planned")
    assert shim.writes() == []
    assert snapshot(rabbit) == before


def test_delete_asks_and_needs_yes_without_a_terminal(cli: CliRun, rabbit: RabbitNode, env: dict[str, str]) -> None:
    user, vhost = unique("u"), unique("v")
    made = cli("setup-broker", "--user", user, "--vhost", vhost, "--password", "visible-pw", "--no-save", env=env)
    assert made.returncode == 0, made.output
    assert "visible to other users" in made.stderr  # --password warns
    assert "visible-pw" not in made.output

    refused = cli("setup-broker", "--delete", "--user", user, "--vhost", vhost, "--json", env=env, input="")
    err = error_json(refused, 11)
    assert err["code"] == "not_confirmed" and "--yes" in err["hint"]
    assert user_of(rabbit, user) is not None

    human = cli("setup-broker", "--delete", "--user", user, "--vhost", vhost, env=env, input="")
    assert human.returncode == 11 and "--yes" in human.stderr and "Traceback" not in human.output

    doc = ok_json(cli("setup-broker", "--delete", "--user", user, "--vhost", vhost, "--yes", "--json", env=env))
    assert doc["changed"] is True
    assert items(doc) == {"user": ("delete", "applied"), "vhost": ("delete", "applied")}
    assert user_of(rabbit, user) is None
    assert vhost not in {v["name"] for v in definitions(rabbit)["vhosts"]}

    again = ok_json(cli("setup-broker", "--delete", "--user", user, "--vhost", vhost, "--json", env=env))
    assert again["changed"] is False  # nothing left: no question asked, exit 0


def test_delete_warns_when_the_saved_url_is_for_the_deleted_user(cli: CliRun, env: dict[str, str]) -> None:
    user, vhost = unique("u"), unique("v")
    ok_json(cli("setup-broker", "--user", user, "--vhost", vhost, "--json", env=env))  # saves the URL
    doc = ok_json(cli("setup-broker", "--delete", "--user", user, "--vhost", vhost, "--yes", "--json", env=env))
    assert any(f"deleted user '{user}'" in w and "broker_url" in w for w in doc["warnings"])
    other = unique("u")
    ok_json(cli("setup-broker", "--user", other, "--vhost", vhost, "--json", env=env))
    human = cli("setup-broker", "--delete", "--user", other, "--vhost", vhost, "--yes", env=env)
    assert human.returncode == 0 and f"deleted user '{other}'" in human.stderr and "warning:" in human.stderr


def test_existing_user_with_unknown_password_is_kept(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], shim: Shim, tmp_path: Path
) -> None:
    user, vhost = unique("u"), unique("v")
    ok_json(cli("setup-broker", "--user", user, "--vhost", vhost, "--no-save", "--json", env=env))
    hash_before = user_of(rabbit, user)["password_hash"]  # type: ignore[index]
    shim.clear()
    other = tmp_path / "elsewhere"
    other.mkdir()
    result = cli("setup-broker", "--user", user, "--vhost", vhost, env=env, cwd=other)
    assert result.returncode == 0, result.output
    assert "--rotate-password" in result.stderr and "cannot include" in result.stderr
    assert "skipped" in result.stdout
    assert shim.writes() == []
    assert user_of(rabbit, user)["password_hash"] == hash_before  # type: ignore[index]
    assert not (other / "celeryctl.toml").exists()


# --------------------------------------------------------------------------- failures


def test_partial_failure_reports_applied_steps_and_rerun_converges(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], tmp_path: Path
) -> None:
    # RabbitMQ imports users, then vhosts, then permissions, and does not roll back: the shim makes
    # the real import stop before the permissions and fail, and the report must say just that.
    user, vhost, pw = unique("u"), unique("v"), "pw-" + uuid.uuid4().hex
    failing = Shim(tmp_path / "failing", partial_import=True)
    args = ("setup-broker", "--user", user, "--vhost", vhost, "--password-stdin")
    bad_env = {**env, "CELERYCTL_RABBITMQ_BIN_DIR": str(failing.dir)}
    err = error_json(cli(*args, "--json", env=bad_env, input=pw), 1)
    assert "simulated failure of the import midway" in err["message"]
    assert "(applied: user, password, vhost, tags; not applied: permissions)" in err["message"]
    assert err["details"]["failed"] == ["import_definitions"] and err["details"]["applied"] == []
    assert {i["item"]: i["status"] for i in err["details"]["items"]} == {
        "user": "applied",
        "password": "applied",
        "vhost": "applied",
        "tags": "applied",
        "permissions": "not applied",
    }
    assert "again" in err["hint"]
    assert pw not in json.dumps(err)
    assert user_of(rabbit, user) is not None and perms_of(rabbit, user, vhost) is None
    # The import, then one more read to see what the node has.
    assert [c.split()[3] for c in failing.calls()] == ["export_definitions", "import_definitions", "export_definitions"]

    human = cli(*args, env=bad_env, input=pw)  # the rest is there now: only the permissions are left to import
    assert human.returncode == 1 and "Traceback" not in human.output
    lines = human.stderr.splitlines()
    assert "the import failed: reading the node again to see what was applied" in lines
    assert "what was applied before the failure" in lines
    assert table_row(human.stderr, "permissions")[-1] == "not applied"
    assert (
        f"error: rabbitmqctl -n {rabbit.name} failed: simulated failure of the import midway "
        "(applied: nothing; not applied: permissions)"
    ) in lines

    doc = ok_json(cli(*args, "--json", env=env, input=pw))
    assert items(doc) == {
        "user": ("unchanged", "unchanged"),
        "password": ("unchanged", "unchanged"),
        "vhost": ("unchanged", "unchanged"),
        "tags": ("unchanged", "unchanged"),
        "permissions": ("create", "applied"),
    }
    assert doc["verification"]["ok"] is True


def test_failed_import_that_applied_nothing_says_so(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], tmp_path: Path
) -> None:
    user, vhost = unique("u"), unique("v")
    failing = Shim(tmp_path / "failing", fail_on="import_definitions", fail_code=69)
    bad_env = {**env, "CELERYCTL_RABBITMQ_BIN_DIR": str(failing.dir)}
    err = error_json(cli("setup-broker", "--user", user, "--vhost", vhost, "--json", env=bad_env), 1)
    assert "(applied: nothing; not applied: user, password, vhost, tags, permissions)" in err["message"]
    assert {i["status"] for i in err["details"]["items"]} == {"not applied"}
    assert user_of(rabbit, user) is None


def test_failed_import_on_an_unreadable_node_is_unknown(rabbit: RabbitNode) -> None:
    """The node goes away during the import: nothing can be read back, so nothing is claimed."""
    from celeryctl.errors import CommandError
    from celeryctl.rabbitmq.ctl import CtlResult, Runner

    real = rabbit.runner()

    class GoneAfterRead(Runner):
        def run(self, *args: str, **kwargs: Any) -> CtlResult:
            if "import_definitions" in args or self.calls:
                self.calls.append(list(args))
                raise CommandError(f"rabbitmqctl {args[0]} failed: nodedown (simulated)", "check the node")
            return super().run(*args, **kwargs)

    runner = GoneAfterRead(bin_dir=real.bin_dir, node=real.node, env=real.env)
    request = Request(user=unique("u"), vhost=unique("v"))
    plan = plan_setup(request, read_state(runner, request))
    runner.calls.clear()
    with pytest.raises(CommandError) as caught:
        apply_plan(runner, plan)
    assert "which changes were applied is unknown" in caught.value.message
    assert {i["status"] for i in caught.value.details["items"]} == {"unknown"}
    assert [c[0] for c in runner.calls] == ["import_definitions", "export_definitions"]


def test_import_touches_nothing_outside_the_plan(rabbit: RabbitNode, make_vhost: VhostFactory) -> None:
    """Other users (guest included), vhosts, permissions, limits and the user's own hash stay as they were."""
    runner = rabbit.runner()
    user, bystander = make_vhost.user("u").name, make_vhost.user("b").name
    vhost_a, vhost_b = make_vhost("va", guest=False).name, make_vhost("vb", guest=False).name
    vhost_new = unique("vn")
    runner.run("set_permissions", "-p", vhost_a, "--", user, "^a", "^a", "^a")
    runner.run("set_permissions", "-p", vhost_b, "--", user, "^b", "^b", "^b")
    runner.run("set_permissions", "-p", vhost_a, "--", bystander, ".*", "", ".*")
    runner.run("set_user_tags", "--", bystander, "monitoring")
    runner.run("set_user_tags", "--", user, "management")
    runner.run("set_user_limits", "--", user, '{"max-connections": 7}')
    runner.run("set_topic_permissions", "-p", vhost_a, "--", user, "amq.topic", "^t", "^t")
    before = definitions(rabbit)

    request = Request(user=user, vhost=vhost_new, tags=["policymaker"], write="^w")
    plan = plan_setup(request, read_state(runner, request))
    assert [s.name for s in plan.steps] == ["import_definitions"]
    apply_plan(runner, plan)
    after = definitions(rabbit)

    def without(defs: dict[str, Any], key: str, drop: Callable[[dict[str, Any]], bool]) -> list[str]:
        return sorted(json.dumps(x, sort_keys=True) for x in defs[key] if not drop(x))

    is_new_perm: Callable[[dict[str, Any]], bool] = lambda p: p["user"] == user and p["vhost"] == vhost_new  # noqa: E731
    assert without(after, "permissions", is_new_perm) == without(before, "permissions", lambda _p: False)
    assert [p for p in after["permissions"] if is_new_perm(p)] == [
        {"user": user, "vhost": vhost_new, "configure": ".*", "write": "^w", "read": ".*"}
    ]
    assert without(after, "vhosts", lambda v: v["name"] == vhost_new) == without(before, "vhosts", lambda _v: False)
    assert without(after, "users", lambda u: u["name"] == user) == without(before, "users", lambda u: u["name"] == user)
    assert after["topic_permissions"] == before["topic_permissions"]
    mine_before = next(u for u in before["users"] if u["name"] == user)
    mine_after = next(u for u in after["users"] if u["name"] == user)
    assert mine_after == {**mine_before, "tags": ["policymaker"]}  # same hash, same limits
    assert any(u["name"] == "guest" for u in after["users"])


def test_fallback_writes_report_a_partial_failure_per_step(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], tmp_path: Path
) -> None:
    """A node without export_definitions gets the per-command writes; a failed one is reported as such."""
    user, vhost, pw = unique("u"), unique("v"), "pw-" + uuid.uuid4().hex
    failing = Shim(tmp_path / "failing", fail={"export_definitions": 64, "set_permissions": 70})
    args = ("setup-broker", "--user", user, "--vhost", vhost, "--password-stdin")
    bad_env = {**env, "CELERYCTL_RABBITMQ_BIN_DIR": str(failing.dir)}
    err = error_json(cli(*args, "--json", env=bad_env, input=pw), 1)
    assert "simulated failure" in err["message"]
    assert sorted(err["details"]["applied"]) == ["add_user", "add_vhost"]
    assert err["details"]["failed"] == ["set_permissions"]
    assert {i["item"]: i["status"] for i in err["details"]["items"]}["permissions"] == "failed"
    assert "again" in err["hint"]
    assert pw not in json.dumps(err)
    assert not any("import_definitions" in c for c in failing.calls())
    assert user_of(rabbit, user) is not None and perms_of(rabbit, user, vhost) is None

    human = cli(*args, env=bad_env, input=pw)  # user and vhost are there now: only the permissions fail
    assert human.returncode == 1 and "Traceback" not in human.output
    lines = human.stderr.splitlines()
    assert "what was applied before the failure" in lines
    assert table_row(human.stderr, "permissions") == [
        "permissions", "create", "(absent)", "configure='.*' write='.*' read='.*'", "failed",
    ]  # fmt: skip
    assert table_row(human.stderr, "user")[-1] == "unchanged"
    assert (
        f"error: rabbitmqctl -n {rabbit.name} failed: simulated failure of set_permissions "
        "(applied: nothing; not applied: set_permissions)"
    ) in lines
    assert ok_json(cli(*args, "--json", env=env, input=pw))["verification"]["ok"] is True


def test_nodes_without_export_definitions_are_read_with_parallel_list_calls(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], tmp_path: Path
) -> None:
    old_node = Shim(tmp_path / "old", fail_on="export_definitions", fail_code=64)
    user, vhost = unique("u"), unique("v")
    args = ("setup-broker", "--user", user, "--vhost", vhost, "--password-env", "PW", "--no-save", "--json")
    old_env = {**env, "CELERYCTL_RABBITMQ_BIN_DIR": str(old_node.dir), "PW": "pw-" + uuid.uuid4().hex}
    assert ok_json(cli(*args, env=old_env))["changed"] is True
    # No hashes read: the per-command writes, with the password on stdin.
    verbs = [next(v for v in WRITE_VERBS if f" {v} " in f" {w} ") for w in old_node.writes()]
    assert sorted(verbs) == ["add_user", "add_vhost", "set_permissions"]
    old_node.clear()
    doc = ok_json(cli(*args, env=old_env))
    assert doc["changed"] is False and doc["verification"]["ok"] is True
    assert old_node.writes() == []
    assert any("authenticate_user" in c for c in old_node.calls())  # the password check, on stdin
    assert all(old_env["PW"] not in c for c in old_node.calls())


BAD_INPUT = [
    (["--user", ""], "--user"),
    (["--vhost", "a\x01b"], "--vhost"),
    (["--user", "x" * 256], "--user"),
    (["--tags", "a b"], "--tags"),
    (["--configure", "("], "--configure"),
    (["--read", "[a-"], "--read"),
]


@pytest.mark.parametrize(("args", "flag"), BAD_INPUT, ids=[f for _a, f in BAD_INPUT])
def test_invalid_input_is_rejected_before_any_call(
    cli: CliRun, env: dict[str, str], shim: Shim, args: list[str], flag: str
) -> None:
    err = error_json(cli("setup-broker", *args, "--json", env=env), 2)
    assert flag in err["message"]
    assert shim.calls() == []  # not even a read


def test_password_sources_are_validated(cli: CliRun, env: dict[str, str], shim: Shim) -> None:
    err = error_json(cli("setup-broker", "--password-env", "NO_SUCH_VAR_XYZ", "--json", env=env), 2)
    assert "NO_SUCH_VAR_XYZ" in err["message"]
    err = error_json(cli("setup-broker", "--password-stdin", "--json", env=env, input=" padded \n"), 2)
    assert "whitespace" in err["message"]
    err = error_json(cli("setup-broker", "--password-stdin", "--password", "x", "--json", env=env, input="y"), 2)
    assert "one way" in err["message"]
    assert shim.calls() == []


def test_node_not_running(cli: CliRun, rabbit: RabbitNode) -> None:
    # A node name nobody runs, asked through the session node's epmd (so no epmd is left behind).
    info = rabbit.info
    env = {"ERL_EPMD_PORT": str(info.epmd_port), "HOME": str(rabbit.node.home)}
    err = error_json(cli("setup-broker", "--node", f"nosuch-{uuid.uuid4().hex[:6]}@localhost", "--json", env=env), 6)
    assert err["code"] == "unreachable" and "not running" in err["message"]
    assert "celeryctl broker start" in err["hint"]
    human = cli("setup-broker", "--node", "nosuch@localhost", env=env)
    assert human.returncode == 6 and "Traceback" not in human.output and "hint" in human.stderr


def test_erlang_cookie_mismatch_real(cli: CliRun, rabbit: RabbitNode, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cookie = home / ".erlang.cookie"
    cookie.write_text("NOTTHECOOKIEOFTHENODEATALL")
    cookie.chmod(0o400)
    env = {"ERL_EPMD_PORT": str(rabbit.info.epmd_port), "HOME": str(home)}
    err = error_json(cli("setup-broker", "--node", rabbit.name, "--json", env=env), 5)
    assert err["code"] == "permission_denied" and "Erlang cookie" in err["message"]


REAL_310_COOKIE_ERROR = """Error: unable to perform an operation on node 'rabbit@vm'. Please see diagnostics information and suggestions below.

Most common reasons for this are:

 * Target node is unreachable (e.g. due to hostname resolution, TCP connection or firewall issues)
 * CLI tool fails to authenticate with the server (e.g. due to CLI tool's Erlang cookie not matching that of the server)
 * Target node is not running

DIAGNOSTICS
===========

attempted to contact: [rabbit@vm]

rabbit@vm:
  * connected to epmd (port 4369) on vm
  * epmd reports node 'rabbit' uses port 25672 for inter-node and CLI tool traffic
  * TCP connection succeeded but Erlang distribution failed
  * suggestion: check if the Erlang cookie is identical for all server nodes and CLI tools
"""


@pytest.mark.parametrize(
    ("stderr", "code", "exit_code", "needle"),
    [
        (REAL_310_COOKIE_ERROR, 69, 5, "Erlang cookie"),
        ("Error: {:badmatch, {:error, :eacces}}\n", 70, 5, "permission denied"),
    ],
    ids=["cookie", "eacces"],
)
def test_not_allowed_fake_rabbitmqctl(
    cli: CliRun, rabbit: RabbitNode, tmp_path: Path, stderr: str, code: int, exit_code: int, needle: str
) -> None:
    (tmp_path / "msg").write_text(stderr)
    fake = fake_bin(tmp_path / "fake", f'cat "{tmp_path / "msg"}" >&2\nexit {code}\n')
    # No celeryctl node in the isolated data dir: the "system node" is the target. An epmd must
    # answer (a node that runs has one), or celeryctl says "not running" before calling the fake.
    env = {"CELERYCTL_RABBITMQ_BIN_DIR": str(fake), "ERL_EPMD_PORT": str(rabbit.info.epmd_port)}
    err = error_json(cli("setup-broker", "--json", env=env), exit_code)
    assert err["code"] == "permission_denied" and needle in err["message"]
    human = cli("setup-broker", env=env)
    assert human.returncode == exit_code and "Traceback" not in human.output and "hint:" in human.stderr


def test_rabbitmq_not_installed(cli: CliRun, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    err = error_json(cli("setup-broker", "--json", env={"CELERYCTL_RABBITMQ_BIN_DIR": str(empty)}), 4)
    assert err["code"] == "not_installed" and "celeryctl broker install" in err["hint"]


# --------------------------------------------------------------------------- the core, directly


def test_fallback_reads_in_parallel_agree_with_export_definitions(rabbit: RabbitNode) -> None:
    runner = rabbit.runner()
    user, vhost, pw = unique("u"), unique("v"), "pw-" + uuid.uuid4().hex
    request = Request(user=user, vhost=vhost, tags=["management", "policymaker"], password=pw)
    plan = plan_setup(request, read_state(runner, request))
    apply_plan(runner, plan)
    exported = read_state(runner, request)
    listed = read_state_parallel(runner, request)
    assert listed.vhosts == exported.vhosts
    assert listed.users[user].tags == exported.users[user].tags == ["management", "policymaker"]
    assert listed.permissions[(user, vhost)] == exported.permissions[(user, vhost)] == (".*", ".*", ".*")
    assert listed.password_checked[user] is True  # authenticate_user, password on stdin
    u = exported.users[user]
    assert password_matches(u.password_hash, u.hashing_algorithm, pw) is True
    assert password_matches(u.password_hash, u.hashing_algorithm, pw + "x") is False
    again = plan_setup(request, listed)
    assert again.changed is False


def test_expected_access_follows_rabbitmq_regex_rules() -> None:
    exp: Callable[..., dict[str, bool]] = lambda **kw: expected_access(Request(**kw))  # noqa: E731
    assert exp() == {"configure": True, "write": True, "read": True}
    assert exp(configure="", write="^amq\\.default$", read="^celery") == {
        "configure": False,
        "write": True,
        "read": True,
    }


def test_failed_verification_is_an_error_and_nothing_is_saved(
    cli: CliRun, rabbit: RabbitNode, env: dict[str, str], workdir: Path
) -> None:
    from celeryctl.rabbitmq.node import pick_free_port

    user, vhost = unique("u"), unique("v")
    closed = pick_free_port([], {rabbit.port})
    args = ("setup-broker", "--user", user, "--vhost", vhost, "--port", str(closed))
    err = error_json(cli(*args, "--json", env=env), 6)
    assert "verification failed" in err["message"] and str(closed) in err["message"]
    assert {i["item"]: i["status"] for i in err["details"]["items"]}["user"] == "applied"
    assert not (workdir / "celeryctl.toml").exists()
    # The changes stay applied; a run against the right port then verifies them.
    doc = ok_json(cli("setup-broker", "--user", user, "--vhost", vhost, "--rotate-password", "--json", env=env))
    assert items(doc)["vhost"] == ("unchanged", "unchanged") and doc["verification"]["ok"] is True


def test_node_from_the_environment(cli: CliRun, rabbit: RabbitNode) -> None:
    env = {
        "CELERYCTL_NODE": f"nosuch-{uuid.uuid4().hex[:6]}@localhost",
        "ERL_EPMD_PORT": str(rabbit.info.epmd_port),
        "HOME": str(rabbit.node.home),
    }
    err = error_json(cli("setup-broker", "--json", env=env), 6)
    assert env["CELERYCTL_NODE"] in err["message"]


def test_delete_asks_on_a_terminal(
    rabbit: RabbitNode, env: dict[str, str], make_vhost: VhostFactory, terminal: TerminalRun
) -> None:
    user, vhost = unique("u"), make_vhost("v", guest=False).name

    def delete_with_answer(answer: str) -> tuple[int, str]:
        term = terminal("setup-broker", "--delete", "--user", user, "--vhost", vhost, env=env)
        term.expect("[y/N]")
        term.send(answer)
        return term.wait(timeout=60), term.text

    code, screen = delete_with_answer("n\n")
    assert code == 11 and "Delete user" in screen and "Traceback" not in screen
    assert vhost in {v["name"] for v in definitions(rabbit)["vhosts"]}
    code, screen = delete_with_answer("y\n")
    assert code == 0, screen
    assert vhost not in {v["name"] for v in definitions(rabbit)["vhosts"]}


def test_no_celeryctl_node_and_no_system_node(cli: CliRun, rabbit: RabbitNode) -> None:
    # The isolated data dir has no node, so the system node is the target; it is not running.
    # The session node's epmd answers for it (so no system epmd is started and left behind).
    env = {"ERL_EPMD_PORT": str(rabbit.info.epmd_port), "HOME": str(rabbit.node.home)}
    err = error_json(cli("setup-broker", "--json", env=env), 6)
    assert err["message"] == "the system RabbitMQ node is not running"
    assert "celeryctl broker start" in err["hint"] and "system service" in err["hint"]
