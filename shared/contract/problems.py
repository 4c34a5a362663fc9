"""RFC 9457 problem details: the one builder for every problem the API answers or the worker
stores with a failed event."""

from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

PROBLEM_TYPE = "https://leadstream.dev/problems/"
MEDIA_TYPE = "application/problem+json"


def problem_body(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    kind: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A problem document; `kind` (e.g. `person-not-found`) names its type under PROBLEM_TYPE."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + kind if kind else "about:blank",
        "title": title,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if errors:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return body


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details, as OpenAPI documents them."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] | None = None
    event_id: UUID | None = Field(None, alias="eventId")
