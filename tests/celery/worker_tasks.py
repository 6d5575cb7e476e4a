"""Celery tasks for messaging-celery's tests, run by a real, unmodified Celery worker:

    CELERY_BROKER_URL=redis://127.0.0.1:6379/5 CELERY_RECORD_FILE=/tmp/calls.jsonl \
        celery -A worker_tasks worker --pool solo -Q some-queue

Each task appends one JSON line per call to the file named by CELERY_RECORD_FILE:
{"task", "id", "args", "kwargs", "headers"} (headers: the custom ones, from
`self.request.headers`). Once the worker consumes, it creates the file named by
CELERY_READY_FILE, if set. The same module sends tasks as Python code does, for the tests of
the other direction:

    python worker_tasks.py send TASK QUEUE COUNT       # args=[{"n": i}] for i in 0..COUNT
    python worker_tasks.py send-pickled TASK QUEUE     # one task with the pickle serializer
    python worker_tasks.py delete-queues QUEUE...      # removes the tests' queues
"""

import json
import os
import sys

from celery import Celery
from celery.signals import worker_ready

app = Celery("worker_tasks", broker=os.environ["CELERY_BROKER_URL"])
app.conf.update(
    accept_content=["json"],
    task_serializer="json",
    broker_connection_retry_on_startup=True,
)


@worker_ready.connect
def _ready(**_):
    path = os.environ.get("CELERY_READY_FILE")
    if path:
        with open(path, "w", encoding="utf-8") as out:
            out.write("ready\n")


def _record(task, args, kwargs):
    line = json.dumps(
        {
            "task": task.name,
            "id": task.request.id,
            "args": list(args),
            "kwargs": kwargs,
            "headers": task.request.headers or {},
        }
    )
    with open(os.environ["CELERY_RECORD_FILE"], "a", encoding="utf-8") as out:
        out.write(line + "\n")


@app.task(bind=True, name="worker_tasks.process_mood_created")
def process_mood_created(self, data):
    """A task of one positional argument, as the AURA360 fallback tasks are."""
    _record(self, [data], {})


@app.task(bind=True, name="worker_tasks.user_registered")
def user_registered(self, data):
    _record(self, [data], {})


@app.task(bind=True, name="worker_tasks.record")
def record(self, *args, **kwargs):
    _record(self, args, kwargs)


@app.task(bind=True, name="worker_tasks.fail")
def fail(self, *args, **kwargs):
    _record(self, args, kwargs)
    raise RuntimeError("worker_tasks.fail always fails")


def _send(task, queue, count):
    with app.producer_or_acquire() as producer:
        for n in range(count):
            app.send_task(task, args=[{"n": n}], queue=queue, producer=producer)


def _send_pickled(task, queue):
    app.send_task(task, args=[{"n": -1}], queue=queue, serializer="pickle")


def _delete_queues(queues):
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        if connection.transport.driver_type == "redis":
            # Lists and kombu's binding sets: kombu only deletes queues it declared.
            keys = [f"{prefix}{queue}" for queue in queues
                    for prefix in ("", "_kombu.binding.", "_kombu.binding_permanent.")]
            channel.client.delete(*keys)
            return
        for queue in queues:
            channel.queue_delete(queue)
            try:
                channel.exchange_delete(queue)
            except Exception:  # a queue of no exchange (a dead-letter queue)
                channel = connection.channel()


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "send":
        _send(rest[0], rest[1], int(rest[2]))
    elif command == "send-pickled":
        _send_pickled(rest[0], rest[1])
    elif command == "delete-queues":
        _delete_queues(rest)
    else:
        sys.exit(f"unknown command {command}")
