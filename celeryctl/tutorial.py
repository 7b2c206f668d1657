"""The tutorial's broker steps in one call: start (or reuse) the private node, then provision it.

``celeryctl demo`` runs this when no broker is configured, so that the demo uses a dedicated
user and vhost (as the tutorial's step 2 does by hand) instead of ``guest`` on ``/``, and saves
the URL where ``worker``, ``submit`` and ``doctor`` find it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from celeryctl.settings import Settings


@dataclass
class PreparedBroker:
    url: str  # with the password: never print it unmasked
    node_started: bool
    changed: bool  # provisioning changed something
    user: str
    vhost: str
    saved_to: Path | None
    rotated: bool  # the demo user's password was unknown and has been replaced

    def to_dict(self) -> dict[str, object]:
        return {
            "node_started": self.node_started,
            "provisioned": self.changed,
            "user": self.user,
            "vhost": self.vhost,
            "saved_to": str(self.saved_to) if self.saved_to else None,
            "password_rotated": self.rotated,
        }


def prepare_broker(
    settings: Settings,
    *,
    port: int | None = None,
    save: bool = True,
    on_progress: Callable[[str], None] | None = None,
) -> PreparedBroker:
    """Start celeryctl's node (or reuse it) and make sure the demo's user and vhost exist.

    The user keeps its password when celeryctl knows it (from the settings file); when it
    exists with a password celeryctl does not know, the password is replaced: this is
    celeryctl's own private node, and the new URL is saved.
    """
    from celeryctl.rabbitmq import provision
    from celeryctl.rabbitmq.plan import Request

    say = on_progress or (lambda _m: None)
    save_to = provision.settings_path(settings) if save else None
    if save_to is not None:  # before the node starts and the user is made: not after, with its password lost
        provision.check_settings_file(save_to)
    say("starting (or reusing) celeryctl's private RabbitMQ node")
    _infos, node_started = settings.local_cluster().start(port=port, on_progress=say)  # a cluster: its members
    request = Request()
    result = provision.setup(request, settings, save_to=save_to, on_progress=say)
    if result.error is not None:  # set up and saved, but a member of the cluster did not answer the login
        say(f"warning: {result.error.message}")
    rotated = False
    if result.url is None:
        rotated = True
        result = provision.setup(Request(rotate_password=True), settings, save_to=save_to, on_progress=say)
    assert result.url is not None  # a rotated password is always known
    settings.broker_url = result.url
    settings.sources["broker_url"] = "setup-broker (demo)"
    return PreparedBroker(
        url=result.url,
        node_started=node_started,
        changed=result.changed,
        user=request.user,
        vhost=request.vhost,
        saved_to=result.saved_to,
        rotated=rotated,
    )
