"""POST /api/partner/events and GET /api/partner/events/{id}."""

import re
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Request
from prometheus_client import Counter
from redis.exceptions import RedisError
from starlette.responses import Response

from ingest_api.auth import authorize, require_scope
from ingest_api.problems import ProblemError, problem_response
from ingest_api.state import IngestState
from shared.auth import READ_SCOPE, WRITE_SCOPE, Principal
from shared.ids import new_event_id
from shared.outcomes import StoredOutcome, event_key
from shared.queue import Envelope, QueueUnavailableError, queue_for
from shared.repository import load_outcomes
from shared.schemas import Accepted, EventIn, EventOutcome

router = APIRouter(prefix="/api/partner/events", tags=["events"])

EVENTS_ACCEPTED = Counter("leadstream_events_accepted_total", "Events queued", ["queue"])
ENQUEUE_FAILURES = Counter("leadstream_enqueue_failures_total", "Events refused with 503")
IDEMPOTENT_REPLAYS = Counter("leadstream_idempotent_replays_total", "Repeated Idempotency-Keys")

_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+)", re.IGNORECASE)
_RETRY_AFTER = {"Retry-After": "1"}
_PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {
        "description": text,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }
    for code, text in {
        400: "Malformed JSON",
        401: "Missing or invalid token",
        403: "Token lacks the scope",
        404: "Person or company not found (with Prefer: wait)",
        413: "Body over 32 KB",
        415: "Not application/json",
        422: "Invalid event: every wrong field in errors[].loc",
        503: "Queue unavailable: retry after Retry-After seconds",
    }.items()
}


def _state(request: Request) -> IngestState:
    state: IngestState = request.app.state.ingest
    return state


def _wait_seconds(prefer: str | None, limit: int) -> int | None:
    match = _WAIT.search(prefer) if prefer else None
    return min(int(match.group(1)), limit) if match else None


def _queued(event_id: UUID, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps({"id": str(event_id), "status": "queued"}),
        status_code=202,
        media_type="application/json",
        headers={"Location": f"{router.prefix}/{event_id}", **(headers or {})},
    )


def _outcome_response(
    event_id: UUID, outcome: StoredOutcome, headers: dict[str, str] | None = None
) -> Response:
    headers = {"Location": f"{router.prefix}/{event_id}", **(headers or {})}
    if outcome.status == "queued":
        return _queued(event_id, headers)
    status = outcome.http_status or 500
    media = "application/problem+json" if outcome.status == "failed" else "application/json"
    return Response(
        orjson.dumps(outcome.body), status_code=status, media_type=media, headers=headers
    )


@router.post(
    "",
    status_code=202,
    response_model=Accepted,
    summary="Create an event",
    openapi_extra={
        "parameters": [
            {
                "name": "Prefer",
                "in": "header",
                "required": False,
                "description": "`wait=N` (N ≤ 30): answer with the outcome, like Sure Send",
                "schema": {"type": "string"},
            },
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Same key, same tenant, 24 h: the first event's id, nothing new",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            },
        ],
        "security": [{"bearer": []}],
    },
    responses={
        200: {"model": EventOutcome, "description": "Prefer: wait — person and company existed"},
        201: {"model": EventOutcome, "description": "Prefer: wait — a person or company created"},
        **_PROBLEMS,
    },
)
async def create_event(event: EventIn, request: Request) -> Response:
    """Queue one event (202), or wait up to N seconds for Sure Send's 201/200 answer."""
    # Auth and headers are read here rather than through Depends/Header parameters: on this hot
    # path FastAPI's per-parameter machinery cost more than the whole enqueue (see bench/).
    principal = authorize(request, WRITE_SCOPE)
    state = _state(request)
    idempotency_key_header = request.headers.get("idempotency-key")
    if idempotency_key_header is not None and not 0 < len(idempotency_key_header) <= 255:
        raise ProblemError(
            422,
            "Invalid event",
            "Idempotency-Key must be 1 to 255 characters",
            kind="validation",
            errors=[{"loc": ["header", "Idempotency-Key"], "msg": "1 to 255 characters"}],
        )
    wait = _wait_seconds(request.headers.get("prefer"), state.settings.max_wait_seconds)
    applied = {"Preference-Applied": f"wait={wait}"} if wait is not None else {}
    envelope = Envelope(
        id=new_event_id(),
        tenant_id=principal.tenant_id,
        received_at=datetime.now(UTC),
        idempotency_key=idempotency_key_header,
        notify=wait is not None,
        payload=event.model_dump(mode="json", by_alias=True, exclude_none=True),
    )

    queue = queue_for(event.type)
    future = state.waiter.register(envelope.id) if wait is not None else None
    try:
        if idempotency_key_header is None:
            await state.enqueuer.enqueue(envelope, queue=queue)
            owner = envelope.id
        else:
            owner = await state.enqueuer.enqueue_keyed(
                envelope,
                queue=queue,
                key=idempotency_key_header,
                key_ttl=state.settings.idempotency_ttl_seconds,
            )
    except QueueUnavailableError as exc:
        if future is not None:
            state.waiter.unregister(envelope.id, future)
        ENQUEUE_FAILURES.inc()
        raise ProblemError(
            503, "Queue unavailable", str(exc), kind="queue-unavailable", headers=_RETRY_AFTER
        ) from None

    headers = dict(applied)
    if owner != envelope.id:  # the key's first event answers; nothing new was queued
        IDEMPOTENT_REPLAYS.inc()
        headers["Idempotent-Replayed"] = "true"
        if future is not None:
            state.waiter.unregister(envelope.id, future)
            future = state.waiter.register(owner)
    else:
        EVENTS_ACCEPTED.labels(queue).inc()
    if future is None or wait is None:
        return _queued(owner, headers)
    outcome = await state.waiter.wait(owner, future, wait)
    return _outcome_response(owner, outcome, headers) if outcome else _queued(owner, headers)


@router.get(
    "/{event_id}",
    summary="Read an event's outcome",
    responses={
        200: {"model": EventOutcome},
        201: {"model": EventOutcome},
        202: {"model": Accepted, "description": "Still queued"},
        **_PROBLEMS,
    },
)
async def read_event(
    event_id: UUID,
    request: Request,
    principal: Annotated[Principal, Depends(require_scope(READ_SCOPE))],
) -> Response:
    """The outcome while Redis keeps it, then the database; 404 for unknown or foreign ids."""
    state = _state(request)
    try:
        raw = await state.redis.get(event_key(event_id))
    except (RedisError, OSError):
        raw = None  # reads fall back to the database
    if raw:
        outcome = StoredOutcome.loads(raw)
        if outcome.tenant_id == principal.tenant_id:
            return _outcome_response(event_id, outcome)
    async with state.engine.connect() as conn:
        stored = await load_outcomes(conn, [event_id], tenant_id=principal.tenant_id)
    if event_id in stored:
        return _outcome_response(event_id, stored[event_id])
    return problem_response(404, "Not found", f"no event {event_id}", kind="not-found")
