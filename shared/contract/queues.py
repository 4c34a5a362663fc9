"""The queue contract: task and queue names, the routing rule and the envelope.

The API sends tasks by these names and never imports the worker; any Celery worker that
registers PROCESS_EVENTS_TASK consumes them.
"""

from datetime import datetime
from typing import Any
from uuid import UUID

from kombu.entity import Queue
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

PROCESS_EVENTS_TASK = "leadstream.process_events"
# Sent by the worker itself, on ACTIVITY_QUEUE: attach the rest of a visitor's earlier anonymous
# events to its person, a bounded number per run. Its arguments: tenant id, visitor id.
BACKFILL_VISITOR_TASK = "leadstream.backfill_visitor"
LEADS_QUEUE = "leads"
ACTIVITY_QUEUE = "activity"
# A person is waiting for an agent: these go to `leads`, which workers drain before `activity`.
LEAD_EVENT_TYPES = frozenset({"form_submission", "inquiry", "appointment_scheduled"})


def queue_for(event_type: str) -> str:
    return LEADS_QUEUE if event_type in LEAD_EVENT_TYPES else ACTIVITY_QUEUE


class Envelope(BaseModel):
    """What travels on the queue: the validated payload and what the API fixed at ingest."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    id: UUID
    tenant_id: UUID
    received_at: datetime
    idempotency_key: str | None = None
    # A caller is waiting (`Prefer: wait`): the worker keeps a short copy of the outcome in
    # Redis for it, and announces it on the channel.
    notify: bool = False
    payload: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def kombu_queues(transport: object) -> tuple[Queue, Queue]:
    """The two queues, as both the worker and publishers declare them.

    On RabbitMQ they are quorum queues (replicated, durable); Redis has no such notion.
    """
    arguments = {} if str(transport).startswith("redis") else {"x-queue-type": "quorum"}
    return (
        Queue(LEADS_QUEUE, routing_key=LEADS_QUEUE, queue_arguments=arguments),
        Queue(ACTIVITY_QUEUE, routing_key=ACTIVITY_QUEUE, queue_arguments=arguments),
    )
