"""The one enqueue path every door hands its validated events to: envelope, checks, queue.

Nothing past it knows which door an event came through. The partner API's single POST adds
idempotency keys and `Prefer: wait` around it (`ingest_api.intake`); the other doors call
`queue_event`.
"""

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import structlog
from prometheus_client import Counter
from pydantic import ValidationError

from ingest_api.problems import ProblemError, field_errors, validation_problem
from ingest_api.state import IngestState
from shared.broker.writers import QueueUnavailableError
from shared.contract.events import EventIn
from shared.contract.queues import ACTIVITY_QUEUE, LEADS_QUEUE, Envelope, queue_for
from shared.ids import new_id

log = structlog.get_logger(__name__)

EVENT_BODY_LIMIT = 32 * 1024
BATCH_BODY_LIMIT = 512 * 1024  # after gzip decoding, if any
BATCH_MAX_EVENTS = 500
_EVENTS_PER_SLICE = 16  # batch events validated between two turns of the event loop

EVENTS_ACCEPTED = Counter("leadstream_events_accepted_total", "Events queued", ["queue"])
ENQUEUE_FAILURES = Counter("leadstream_enqueue_failures_total", "Events refused with 503")
ACCEPTED = {queue: EVENTS_ACCEPTED.labels(queue) for queue in (LEADS_QUEUE, ACTIVITY_QUEUE)}


async def queue_event(
    state: IngestState, event: EventIn, tenant_id: UUID, extra: dict[str, str | None]
) -> UUID:
    """Queue one event for `tenant_id`, its payload updated by `extra` (a None value removes
    the field), and return its id; ProblemError 422 if it cannot be queued, 503 if the queue
    did not take it in time."""
    envelope = make_envelope(event, tenant_id, datetime.now(UTC), None, notify=False)
    for name, value in extra.items():
        if value is None:
            envelope.payload.pop(name, None)
        else:
            envelope.payload[name] = value
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


@dataclass
class Planned:
    """A batch's events validated one by one: a result per event, in order, and the good
    ones' envelopes by queue."""

    results: list[dict[str, Any]]
    by_queue: dict[str, list[Envelope]] = field(default_factory=dict)


async def plan_events(
    items: list[Any],
    tenant_id: UUID,
    received_at: datetime,
    ids: Callable[[int], UUID] | None = None,
    *,
    single: bool = False,
) -> Planned:
    """Validate each item on its own, so a bad event never costs its neighbours; `ids` names
    each event's id by its index (default: a new one). Errors are located under
    body.events[index], or under body for a `single` event."""
    planned = Planned([])
    for index, item in enumerate(items):
        if index % _EVENTS_PER_SLICE == _EVENTS_PER_SLICE - 1:
            # Let the loop breathe: 200 contact-rich events take 100-600 ms to validate,
            # a stall that would otherwise fail other requests' Redis connects and replies.
            await asyncio.sleep(0)
        try:
            event = EventIn.model_validate(item)
        except ValidationError as exc:
            errors = field_errors(
                exc.errors(include_url=False, include_input=False),
                prefix=("body",) if single else ("body", "events", index),
            )
            planned.results.append({"index": index, "status": "rejected", "errors": errors})
            continue
        envelope = make_envelope(
            event, tenant_id, received_at, None, notify=False, event_id=ids(index) if ids else None
        )
        if (problem := unqueueable(envelope)) is not None:
            errors = [{**problem, "loc": ["body"] if single else ["body", "events", index]}]
            planned.results.append({"index": index, "status": "rejected", "errors": errors})
            continue
        planned.by_queue.setdefault(queue_for(event.type), []).append(envelope)
        planned.results.append({"index": index, "id": str(envelope.id), "status": "queued"})
    return planned


async def queue_planned(state: IngestState, planned: Planned) -> None:
    """Queue the planned events in one write: all of them, or none and 503."""
    if not planned.by_queue:
        return
    try:
        await state.enqueuer.enqueue_all(planned.by_queue)
    except QueueUnavailableError as exc:
        ENQUEUE_FAILURES.inc(sum(len(queued) for queued in planned.by_queue.values()))
        raise unavailable(exc) from None
    for queue, queued in planned.by_queue.items():
        ACCEPTED[queue].inc(len(queued))


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
    event: EventIn,
    tenant_id: UUID,
    received_at: datetime,
    key: str | None,
    notify: bool,
    event_id: UUID | None = None,
) -> Envelope:
    # Every value is already valid: construct without validating again.
    return Envelope.model_construct(
        id=event_id or new_id(),
        tenant_id=tenant_id,
        received_at=received_at,
        idempotency_key=key,
        notify=notify,
        payload=event.model_dump(mode="json", by_alias=True, exclude_none=True),
    )


def parse_json(body: bytes) -> Any:
    """The body's JSON; 400 if it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ProblemError(
            400,
            "Malformed JSON",
            "the body is not valid JSON",
            kind="malformed-json",
            errors=[{"loc": ["body"], "msg": str(exc), "type": "json_invalid"}],
        ) from None


def batch_items(data: Any) -> list[Any]:
    """A batch's events, unvalidated; 422 for a body that is no batch."""
    events = data.get("events") if isinstance(data, dict) else None
    if not isinstance(events, list) or not 0 < len(events) <= BATCH_MAX_EVENTS:
        raise ProblemError(
            422,
            "Invalid batch",
            f'send {{"events": [...]}} with 1 to {BATCH_MAX_EVENTS} events',
            kind="validation",
            errors=[{"loc": ["body", "events"], "msg": f"a list of 1 to {BATCH_MAX_EVENTS}"}],
        )
    if extra := sorted(set(data) - {"events"}):
        raise ProblemError(
            422,
            "Invalid batch",
            "the batch holds only events",
            kind="validation",
            errors=[
                {"loc": ["body", key], "msg": "Extra inputs are not permitted"} for key in extra
            ],
        )
    return events
