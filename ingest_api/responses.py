"""Answers about one event, shared by the create route and the read route."""

from uuid import UUID

import orjson
from starlette.responses import Response

from ingest_api.paths import EVENTS_PATH
from ingest_api.problems import problem_response
from shared.contract.outcomes import StoredOutcome


def queued_body(event_id: UUID) -> bytes:
    return b'{"id":"%s","status":"queued"}' % str(event_id).encode()


def outcome_response(
    event_id: UUID, outcome: StoredOutcome, headers: dict[str, str] | None = None
) -> Response:
    """202 while queued; then Sure Send's 201/200 with the outcome, or the failure's problem."""
    headers = {"Location": f"{EVENTS_PATH}/{event_id}", **(headers or {})}
    if outcome.status == "queued":
        return Response(
            queued_body(event_id), status_code=202, media_type="application/json", headers=headers
        )
    media = "application/problem+json" if outcome.status == "failed" else "application/json"
    return Response(
        orjson.dumps(outcome.body),
        status_code=outcome.http_status or 500,
        media_type=media,
        headers=headers,
    )


def found_response(body: dict[str, object] | None, what: str) -> Response:
    """The record as JSON, or 404 naming `what`."""
    if body is None:
        return problem_response(404, "Not found", f"no {what}", kind="not-found")
    return Response(orjson.dumps(body), media_type="application/json")
