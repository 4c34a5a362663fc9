"""Reads of events: one outcome, and a person's timeline. The POSTs are ingest_api.intake."""

import base64
from datetime import datetime
from typing import Annotated
from uuid import UUID

import orjson
from fastapi import APIRouter, Query
from pydantic import AwareDatetime
from redis.exceptions import RedisError
from starlette.responses import Response

from ingest_api.auth import ReaderDep
from ingest_api.openapi import READ_PROBLEMS
from ingest_api.paths import EVENTS_PATH
from ingest_api.problems import ProblemError, problem_response
from ingest_api.responses import outcome_response
from ingest_api.state import StateDep
from shared.contract.outcomes import StoredOutcome, event_key
from shared.contract.responses import Accepted, EventOutcome, Timeline
from shared.db.reads import load_outcomes, load_person, load_timeline

router = APIRouter(prefix=EVENTS_PATH, tags=["events"])


def _encode_cursor(position: tuple[datetime, UUID]) -> str:
    occurred_at, event_id = position
    raw = orjson.dumps([occurred_at.isoformat(), str(event_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        occurred_at, event_id = orjson.loads(raw)
        position = datetime.fromisoformat(occurred_at), UUID(event_id)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        position = None
    if position is None or position[0].tzinfo is None:
        raise ProblemError(
            422,
            "Invalid parameter",
            "cursor is not one this API gave out",
            kind="validation",
            errors=[{"loc": ["query", "cursor"], "msg": "not a cursor from nextCursor"}],
        )
    return position


@router.get(
    "",
    summary="A person's timeline, newest first",
    responses={200: {"model": Timeline}, **READ_PROBLEMS},
)
async def read_timeline(
    state: StateDep,
    principal: ReaderDep,
    person_id: Annotated[UUID, Query(alias="personId")],
    event_type: Annotated[str | None, Query(alias="type", min_length=1, max_length=64)] = None,
    since: Annotated[AwareDatetime | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 25,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    exclude_bots: Annotated[
        bool,
        Query(
            alias="excludeBots",
            description="true: leave out the events marked `bot`",
        ),
    ] = False,
) -> Response:
    """Up to `limit` events of the person, newest first; `nextCursor` is null on the last page."""
    before = _decode_cursor(cursor) if cursor is not None else None
    async with state.engine.connect() as conn:
        if await load_person(conn, tenant_id=principal.tenant_id, person_id=person_id) is None:
            return problem_response(404, "Not found", f"no person {person_id}", kind="not-found")
        page = await load_timeline(
            conn,
            tenant_id=principal.tenant_id,
            person_id=person_id,
            event_type=event_type,
            since=since,
            before=before,
            without_bots=exclude_bots,
            limit=limit + 1,  # one more tells whether a next page exists
        )
    next_cursor = _encode_cursor(page[limit - 1][1]) if len(page) > limit else None
    body = {"events": [event for event, _ in page[:limit]], "nextCursor": next_cursor}
    return Response(orjson.dumps(body), media_type="application/json")


@router.get(
    "/{event_id}",
    summary="Read an event's outcome",
    responses={
        200: {"model": EventOutcome},
        201: {"model": EventOutcome},
        202: {"model": Accepted, "description": "Still queued"},
        **READ_PROBLEMS,
    },
)
async def read_event(
    event_id: UUID,
    state: StateDep,
    principal: ReaderDep,
) -> Response:
    """202 while queued, then the outcome; 404 for unknown or foreign ids."""
    # Redis holds the "queued" marker (or a waiting caller's short copy of the outcome); the
    # worker deletes the marker only after commit, so a read sees the marker or the row.
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
