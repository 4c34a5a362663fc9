"""GET /api/partner/events/{id}; the POST is served by ingest_api.intake."""

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from redis.exceptions import RedisError
from starlette.responses import Response

from ingest_api.auth import require_scope
from ingest_api.problems import problem_response
from ingest_api.responses import EVENTS_PATH, outcome_response
from ingest_api.state import IngestState
from shared.auth import READ_SCOPE, Principal
from shared.outcomes import StoredOutcome, event_key
from shared.repository import load_outcomes
from shared.schemas import Accepted, EventOutcome

router = APIRouter(prefix=EVENTS_PATH, tags=["events"])

PROBLEMS: dict[int | str, dict[str, Any]] = {
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


@router.get(
    "/{event_id}",
    summary="Read an event's outcome",
    responses={
        200: {"model": EventOutcome},
        201: {"model": EventOutcome},
        202: {"model": Accepted, "description": "Still queued"},
        **PROBLEMS,
    },
)
async def read_event(
    event_id: UUID,
    request: Request,
    principal: Annotated[Principal, Depends(require_scope(READ_SCOPE))],
) -> Response:
    """The outcome while Redis keeps it, then the database; 404 for unknown or foreign ids."""
    state: IngestState = request.app.state.ingest
    try:
        raw = await state.redis.get(event_key(event_id))
    except (RedisError, OSError):
        raw = None  # reads fall back to the database
    if raw:
        outcome = StoredOutcome.loads(raw)
        if outcome.tenant_id == principal.tenant_id:
            return outcome_response(event_id, outcome)
    async with state.engine.connect() as conn:
        stored = await load_outcomes(conn, [event_id], tenant_id=principal.tenant_id)
    if event_id in stored:
        return outcome_response(event_id, stored[event_id])
    return problem_response(404, "Not found", f"no event {event_id}", kind="not-found")
