"""What the API answers and the worker stores as an outcome (camelCase on the wire)."""

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# Why a stored occurredAt is not the client's (worker/matching/clock.py decides).
ClockAdjustment = Literal["corrected", "clamped"]


class ResponseModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class Accepted(ResponseModel):
    id: UUID
    status: Literal["queued"] = "queued"


class ContactPoint(ResponseModel):
    """`isVerified` is `false` on a phone number that is not valid for the tenant's region
    (nor with its own country code): kept on the person, listed after the valid phones, never
    primary and never used to match an event to a person. It is absent everywhere else."""

    value: str
    type: str | None = None
    is_primary: bool
    is_verified: bool | None = None


class PersonOut(ResponseModel):
    """`externalId` is the app's own id for the person (present once an event gave one)."""

    id: UUID
    external_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    name: str | None = None
    emails: list[ContactPoint]
    phones: list[ContactPoint]
    tags: list[str] = Field(default_factory=list)
    source: str | None = None
    stage: str | None = None
    company_id: UUID | None = None
    created_at: datetime
    updated_at: datetime


class CompanyOut(ResponseModel):
    id: UUID
    name: str
    website: str | None = None
    industry: str | None = None
    company_size: str | None = None
    description: str | None = None
    created: datetime
    updated: datetime


class EventOut(ResponseModel):
    """The stored event: its ids and times plus the fields that were sent.

    `bot` is present, and `true`, only when the event's User-Agent is a known crawler's or
    headless browser's. `occurredAt` is by the server's clock: when the client's clock
    (`sentAt` against the time of receipt) was off by more than 5 minutes, the client's
    `occurredAt` is shifted by that offset (`clockAdjustment` `corrected`); a time still more
    than a day ahead of receipt becomes the time of receipt (`clamped`). `clientOccurredAt` and
    `sentAt` are the client's times as sent."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    id: UUID
    person_id: UUID | None = None
    company_id: UUID | None = None
    event_type: str
    occurred_at: datetime
    created_at: datetime
    bot: Literal[True] | None = None
    client_occurred_at: datetime | None = None
    sent_at: datetime | None = None
    clock_adjustment: ClockAdjustment | None = None


class Timeline(ResponseModel):
    """A page of a person's events, newest first; `nextCursor` fetches the next page."""

    events: list[EventOut]
    next_cursor: str | None


class MatchConflict(ResponseModel):
    """The event's identities also belong to other people, who were left untouched."""

    other_person_ids: list[UUID]


class EventOutcome(ResponseModel):
    """Sure Send's create-event response (201 when a person or company was created)."""

    event: EventOut
    person: PersonOut | None = None
    company: CompanyOut | None = None
    was_person_created: bool
    was_company_created: bool | None = None
    match_conflict: MatchConflict | None = None
