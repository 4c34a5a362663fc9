"""How a Celery task message is written: the only place that builds one.

The API never imports the worker: it writes ordinary Celery (protocol 2) messages, in kombu's
Redis wire format for the Redis broker or through kombu for any other, so any Celery worker
consumes them.
"""

import base64
import os
import socket
from typing import Any
from uuid import uuid4

import orjson
from kombu.connection import Connection

from shared.contract.queues import PROCESS_EVENTS_TASK, kombu_queues

_ORIGIN = f"leadstream-api@{socket.gethostname()}:{os.getpid()}"


def _task_headers(*, task: str, task_id: str, argsrepr: str) -> dict[str, Any]:
    """Celery protocol-2 task headers."""
    return {
        "lang": "py",
        "task": task,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": argsrepr,
        "kwargsrepr": "{}",
        "origin": _ORIGIN,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }


def _task_body(args: list[Any]) -> list[Any]:
    return [args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def celery_task_message(*, task: str, queue: str, args: list[Any], argsrepr: str) -> bytes:
    """One Celery protocol-2 task message, as kombu's Redis transport stores it."""
    task_id = str(uuid4())
    return orjson.dumps(
        {
            "body": base64.b64encode(orjson.dumps(_task_body(args))).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": _task_headers(task=task, task_id=task_id, argsrepr=argsrepr),
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                # The anonymous exchange: kombu restores an unacked message to `routing_key`.
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid4()),
            },
        }
    )


def task_message(queue: str, chunk: list[dict[str, Any]]) -> bytes:
    """The raw Redis message that asks a worker to process one chunk of envelopes."""
    return celery_task_message(
        task=PROCESS_EVENTS_TASK, queue=queue, args=[chunk], argsrepr=envelopes_argsrepr(chunk)
    )


def envelopes_argsrepr(chunk: list[Any]) -> str:
    """What Flower shows as the task's arguments: a count, never the events (personal data).
    The worker's retries write it too."""
    return f"[<{len(chunk)} envelopes>]"


def publish_wires(connection: Connection, queue: str, chunks: list[list[dict[str, Any]]]) -> None:
    """Publish one Celery task message per chunk of envelopes, declaring the queue first."""
    producer = connection.Producer(serializer="json")
    declaration = next(q for q in kombu_queues(connection.transport_cls) if q.name == queue)
    for chunk in chunks:
        task_id = str(uuid4())
        producer.publish(
            _task_body([chunk]),
            exchange="",
            routing_key=queue,
            headers=_task_headers(
                task=PROCESS_EVENTS_TASK, task_id=task_id, argsrepr=envelopes_argsrepr(chunk)
            ),
            correlation_id=task_id,
            delivery_mode=2,
            declare=[declaration],
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.1},
        )
