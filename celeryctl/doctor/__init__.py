"""``celeryctl doctor``: a fast, complete health check of broker, credentials, app, backend, workers.

Every check returns a :class:`Check` (name, status ``ok``/``warn``/``fail``/``skip``, seconds,
detail, hint, data); this package knows nothing of display.  A check that cannot run because an
earlier one failed is ``skip``, never a second failure.  A failure doctor does not expect (a bug)
is not a verdict: it propagates to the CLI's boundary (exit 70).

* :mod:`.check` — :class:`Check`, the statuses and the titles, in order;
* :mod:`.runner` — :func:`run_doctor` and :class:`DoctorReport`: the checks in order, in parallel;
* :mod:`.network` — settings, TCP, AMQP handshake, authentication, virtual host, permissions;
* :mod:`.local_node` — RabbitMQ's tools on this machine, the node, its alarms;
* :mod:`.app` — the Celery app, result backend, workers and queue depths (through kombu);
* :mod:`.versions` — library and server versions, known-bad combinations.

celery, kombu and pika are imported inside the functions that use them.
"""

from __future__ import annotations

from celeryctl.doctor.check import TITLES, Check
from celeryctl.doctor.runner import DoctorReport, run_doctor
from celeryctl.doctor.versions import version_problems

__all__ = ["TITLES", "Check", "DoctorReport", "run_doctor", "version_problems"]
