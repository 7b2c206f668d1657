"""A Celery app that accepts pickle, for doctor's serializer check (tests/test_doctor_reliability.py)."""

from celery import Celery

app = Celery("pickle_app")
app.conf.accept_content = ["json", "pickle"]
app.conf.task_serializer = "pickle"


@app.task(name="pickle_app.echo")
def echo(value: object) -> object:
    return value
