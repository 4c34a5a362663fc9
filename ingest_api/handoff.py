"""The one enqueue path every door hands its validated events to: envelope, checks, queue.

Nothing past it knows which door an event came through. The partner API's single POST adds
idempotency keys and `Prefer: wait` around it (`ingest_api.intake`); the other doors call
`queue_event`.
"""

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import structlog
from prometheus_client import Counter

from ingest_api.problems import ProblemError, validation_problem
from ingest_api.state import IngestState
from shared.broker.writers import QueueUnavailableError
from shared.contract.events import EventIn
from shared.contract.queues import ACTIVITY_QUEUE, LEADS_QUEUE, Envelope, queue_for
from shared.ids import new_id

log = structlog.get_logger(__name__)

EVENT_BODY_LIMIT = 32 * 1024

EVENTS_ACCEPTED = Counter("leadstream_events_accepted_total", "Events queued", ["queue"])
ENQUEUE_FAILURES = Counter("leadstream_enqueue_failures_total", "Events refused with 503")
ACCEPTED = {queue: EVENTS_ACCEPTED.labels(queue) for queue in (LEADS_QUEUE, ACTIVITY_QUEUE)}


async def queue_event(state: IngestState, event: EventIn, tenant_id: UUID) -> UUID:
    """Queue one event for `tenant_id` and return its id; ProblemError 422 if it cannot be
    queued, 503 if the queue did not take it in time."""
    envelope = make_envelope(event, tenant_id, datetime.now(UTC), None, notify=False)
    if (problem := unqueueable(envelope)) is not None:
        raise validation_problem([{**problem, "loc": ()}], prefix=("body",))
    queue = queue_for(event.type)
    try:
        await state.enqueuer.enqueue(envelope, queue=queue)
    except QueueUnavailableError as exc:
        ENQUEUE_FAILURES.inc()
        raise unavailable(exc) from None
    ACCEPTED[queue].inc()
    return envelope.id


def unavailable(exc: QueueUnavailableError) -> ProblemError:
    # The cause is logged, not shown: it names our infrastructure.
    log.warning("enqueue.unavailable", error=str(exc))
    return ProblemError(
        503,
        "Queue unavailable",
        "the queue did not take the event in time: retry after Retry-After seconds",
        kind="queue-unavailable",
        headers={"Retry-After": "1"},
    )


def unqueueable(envelope: Envelope) -> dict[str, Any] | None:
    """Why this event alone cannot be queued, checked here, in its own request: a message that
    failed to serialise would fail every event coalesced with it, whoever sent them."""
    try:
        size = len(orjson.dumps(envelope.payload))
    except (TypeError, orjson.JSONEncodeError) as exc:
        return {"msg": f"the event cannot be serialised: {exc}", "type": "unserialisable"}
    if size > EVENT_BODY_LIMIT:
        return {"msg": f"an event may not exceed {EVENT_BODY_LIMIT} bytes", "type": "too_large"}
    return None


def make_envelope(
    event: EventIn, tenant_id: UUID, received_at: datetime, key: str | None, notify: bool
) -> Envelope:
    # Every value is already valid: construct without validating again.
    return Envelope.model_construct(
        id=new_id(),
        tenant_id=tenant_id,
        received_at=received_at,
        idempotency_key=key,
        notify=notify,
        payload=event.model_dump(mode="json", by_alias=True, exclude_none=True),
    )
