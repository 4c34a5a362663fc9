"""Reads that both sides need: the outcome of an event, rebuilt from the database.

The worker builds every outcome it publishes with `load_outcomes` inside its transaction, and
the API uses it once an outcome has left Redis, so both always give the same answer.
"""

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

from sqlalchemy import Row, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.models import Company, DeadLetter, Event, Person, PersonEmail, PersonPhone
from shared.outcomes import StoredOutcome

events_t = Event.__table__
people_t = Person.__table__
emails_t = PersonEmail.__table__
phones_t = PersonPhone.__table__
companies_t = Company.__table__
dead_letters_t = DeadLetter.__table__

# Event columns echoed back under their wire names when they are set.
_EVENT_FIELDS = {
    "visitor_id": "visitorId",
    "source": "source",
    "page_url": "pageUrl",
    "page_title": "pageTitle",
    "page_referrer": "pageReferrer",
    "page_duration": "pageDuration",
    "property": "property",
    "property_search": "propertySearch",
    "message": "message",
    "metadata": "metadata",
    "ip_address": "ipAddress",
    "user_agent": "userAgent",
}


def event_body(row: Row[Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"id": str(row.id)}
    if row.person_id is not None:
        body["personId"] = str(row.person_id)
    if row.company_id is not None:
        body["companyId"] = str(row.company_id)
    body["eventType"] = row.event_type
    body["occurredAt"] = row.occurred_at.isoformat()
    body["createdAt"] = row.created_at.isoformat()
    for column, name in _EVENT_FIELDS.items():
        value = row._mapping[column]
        if value is not None:
            body[name] = value
    return body


def _contact(row: Row[Any]) -> dict[str, Any]:
    point: dict[str, Any] = {"value": row.value, "isPrimary": row.is_primary}
    if row.type is not None:
        point["type"] = row.type
    return point


def person_body(
    row: Row[Any], emails: Sequence[Row[Any]], phones: Sequence[Row[Any]]
) -> dict[str, Any]:
    name = " ".join(part for part in (row.first_name, row.last_name) if part) or None
    body: dict[str, Any] = {"id": str(row.id)}
    for key, value in (("firstName", row.first_name), ("lastName", row.last_name), ("name", name)):
        if value is not None:
            body[key] = value
    body["emails"] = [_contact(e) for e in emails]
    body["phones"] = [_contact(p) for p in phones]
    if row.tags:
        body["tags"] = list(row.tags)
    for key, value in (("source", row.source), ("stage", row.stage)):
        if value is not None:
            body[key] = value
    if row.company_id is not None:
        body["companyId"] = str(row.company_id)
    body["createdAt"] = row.created_at.isoformat()
    body["updatedAt"] = row.updated_at.isoformat()
    return body


def company_body(row: Row[Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"id": str(row.id), "name": row.name}
    for key, value in (
        ("website", row.website),
        ("industry", row.industry),
        ("companySize", row.company_size),
        ("description", row.description),
    ):
        if value is not None:
            body[key] = value
    body["created"] = row.created_at.isoformat()
    body["updated"] = row.updated_at.isoformat()
    return body


async def load_people(
    conn: AsyncConnection, person_ids: Iterable[UUID]
) -> dict[UUID, dict[str, Any]]:
    """Person bodies with their e-mails and phones (primary first, then oldest)."""
    ids = list(set(person_ids))
    if not ids:
        return {}
    people = (await conn.execute(select(people_t).where(people_t.c.id.in_(ids)))).all()
    both = union_all(
        *(
            select(
                literal(kind).label("kind"),
                table.c.person_id,
                table.c.value,
                table.c.type,
                table.c.is_primary,
                table.c.created_at,
            ).where(table.c.person_id.in_(ids))
            for kind, table in (("emails", emails_t), ("phones", phones_t))
        )
    ).subquery()
    rows = await conn.execute(
        select(both).order_by(both.c.is_primary.desc(), both.c.created_at, both.c.value)
    )
    contacts: dict[str, dict[UUID, list[Row[Any]]]] = {
        "emails": defaultdict(list),
        "phones": defaultdict(list),
    }
    for row in rows:
        contacts[row.kind][row.person_id].append(row)
    return {
        p.id: person_body(p, contacts["emails"][p.id], contacts["phones"][p.id]) for p in people
    }


async def load_outcomes(
    conn: AsyncConnection, event_ids: Iterable[UUID], *, tenant_id: UUID | None = None
) -> dict[UUID, StoredOutcome]:
    """The outcome of each stored or dead-lettered event; `tenant_id` limits it to one tenant."""
    ids = list(set(event_ids))
    if not ids:
        return {}
    query = select(events_t).where(events_t.c.id.in_(ids))
    dead_query = select(dead_letters_t).where(dead_letters_t.c.event_id.in_(ids))
    if tenant_id is not None:
        query = query.where(events_t.c.tenant_id == tenant_id)
        dead_query = dead_query.where(dead_letters_t.c.tenant_id == tenant_id)
    events = (await conn.execute(query)).all()
    people = await load_people(conn, (e.person_id for e in events if e.person_id))
    company_ids = [e.company_id for e in events if e.company_id]
    companies = (
        {
            c.id: company_body(c)
            for c in (
                await conn.execute(select(companies_t).where(companies_t.c.id.in_(company_ids)))
            ).all()
        }
        if company_ids
        else {}
    )

    outcomes: dict[UUID, StoredOutcome] = {}
    for e in events:
        body: dict[str, Any] = {"event": event_body(e)}
        if e.person_id in people:
            body["person"] = people[e.person_id]
        body["wasPersonCreated"] = e.was_person_created
        if e.was_company_created is not None:
            if e.company_id in companies:
                body["company"] = companies[e.company_id]
            body["wasCompanyCreated"] = e.was_company_created
        if e.match_conflict:
            body["matchConflict"] = {"otherPersonIds": e.match_conflict}
        created = e.was_person_created or bool(e.was_company_created)
        outcomes[e.id] = StoredOutcome(
            tenant_id=e.tenant_id,
            status="processed",
            http_status=201 if created else 200,
            body=body,
        )
    for d in (await conn.execute(dead_query)).all():
        outcomes.setdefault(
            d.event_id,
            StoredOutcome(
                tenant_id=d.tenant_id,
                status="failed",
                http_status=d.problem.get("status", 500),
                body=d.problem,
            ),
        )
    return outcomes
