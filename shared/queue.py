"""The queue contract: task and queue names, the envelope, and the API's enqueue path.

The API never imports the worker: it writes ordinary Celery (protocol 2) messages in kombu's
Redis wire format, so any Celery worker consumes them. A Celery `.delay()` is synchronous and
was measured at ~750 req/s inside an async handler; here requests that arrive while a write is
in flight are coalesced, per queue, into one message and one Redis round trip.
"""

import asyncio
import base64
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from importlib.resources import files
from typing import Any
from uuid import UUID, uuid4

import kombu
import orjson
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from shared.outcomes import event_key, queued_marker

PROCESS_EVENTS_TASK = "leadstream.process_events"
LEADS_QUEUE = "leads"
ACTIVITY_QUEUE = "activity"
# A person is waiting for an agent: these go to `leads`, which workers drain before `activity`.
LEAD_EVENT_TYPES = frozenset({"form_submission", "inquiry", "appointment_scheduled"})

_ORIGIN = f"leadstream-api@{socket.gethostname()}:{os.getpid()}"
_ENQUEUE_SCRIPT = files("shared").joinpath("enqueue.lua").read_text()


def queue_for(event_type: str) -> str:
    return LEADS_QUEUE if event_type in LEAD_EVENT_TYPES else ACTIVITY_QUEUE


class Envelope(BaseModel):
    """What travels on the queue: the validated payload and what the API fixed at ingest."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    id: UUID
    tenant_id: UUID
    received_at: datetime
    idempotency_key: str | None = None
    # A caller is waiting (`Prefer: wait`): the worker publishes the outcome on the channel.
    notify: bool = False
    payload: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


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


def publish_envelopes(broker_url: str, envelopes: list[Envelope]) -> None:
    """Queue envelopes from synchronous code (the CLI) through kombu, on any Celery broker."""
    by_queue: dict[str, list[dict[str, Any]]] = {}
    for envelope in envelopes:
        by_queue.setdefault(queue_for(str(envelope.payload.get("type"))), []).append(
            envelope.to_wire()
        )
    with kombu.Connection(broker_url) as connection:
        producer = connection.Producer(serializer="json")
        for queue, wires in by_queue.items():
            task_id = str(uuid4())
            producer.publish(
                _task_body([wires]),
                exchange="",
                routing_key=queue,
                headers=_task_headers(
                    task=PROCESS_EVENTS_TASK, task_id=task_id, argsrepr=f"[<{len(wires)}>]"
                ),
                correlation_id=task_id,
                delivery_mode=2,
                retry=True,
                retry_policy={"max_retries": 3},
            )


class QueueUnavailableError(Exception):
    """The broker did not confirm the event in time; the caller answers 503."""


@dataclass
class _Lane:
    """Events waiting for one queue, and whether a write to it is in flight."""

    queue: str
    pending: list[tuple[Envelope, asyncio.Future[None]]] = field(default_factory=list)
    flushing: bool = False


class RedisEnqueuer:
    """Coalesces concurrent enqueues into one atomic Redis write per queue."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        timeout: float,
        marker_ttl: int,
        max_events_per_message: int,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._marker_ttl = marker_ttl
        self._max_events = max_events_per_message
        self._script = client.register_script(_ENQUEUE_SCRIPT)
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def enqueue(self, envelope: Envelope, *, queue: str) -> None:
        """Return once Redis holds the event; raise QueueUnavailableError otherwise."""
        lane = self._lanes.setdefault(queue, _Lane(queue))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane.pending.append((envelope, done))
        if not lane.flushing:
            lane.flushing = True
            task = asyncio.create_task(self._drain(lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            async with asyncio.timeout(self._timeout):
                await done
        except TimeoutError:
            raise QueueUnavailableError("the queue did not answer in time") from None

    async def _drain(self, lane: _Lane) -> None:
        # Whatever arrived during one write goes out together in the next one.
        try:
            while lane.pending:
                batch, lane.pending = lane.pending, []
                try:
                    await asyncio.wait_for(self._write(lane.queue, batch), self._timeout)
                except Exception as exc:
                    error = QueueUnavailableError(f"the queue is unavailable: {exc!r}")
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(error)
                            done.exception()  # a waiter that timed out must not warn on GC
                else:
                    for _, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            lane.flushing = False

    async def _write(self, queue: str, batch: list[tuple[Envelope, asyncio.Future[None]]]) -> None:
        wires = [envelope.to_wire() for envelope, _ in batch]
        messages = [
            celery_task_message(
                task=PROCESS_EVENTS_TASK,
                queue=queue,
                args=[chunk],
                argsrepr=f"[<{len(chunk)} envelopes>]",
            )
            for chunk in (
                wires[i : i + self._max_events] for i in range(0, len(wires), self._max_events)
            )
        ]
        marker_keys = [event_key(envelope.id) for envelope, _ in batch]
        markers = [queued_marker(envelope.tenant_id) for envelope, _ in batch]
        await self._script(
            keys=[queue, *marker_keys],
            args=[self._marker_ttl, len(messages), *messages, *markers],
        )
