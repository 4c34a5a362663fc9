"""Reads from the database: the outcome of an event, and the records the API shows.

The worker builds every outcome it publishes with `load_outcomes` inside its transaction, and
the API uses it once an outcome has left Redis, so both always give the same answer. The read
routes (timeline, people, companies) use the same builders, so a record looks the same
everywhere.
"""

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from shared.contract.outcomes import StoredOutcome
from shared.db.select_lists import Getter, SelectList, columns, contacts_of

# Event columns echoed back under their wire names when they are set, in body order.
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
    "bot": "bot",
    "client_occurred_at": "clientOccurredAt",
    "sent_at": "sentAt",
    "clock_adjustment": "clockAdjustment",
}
_JSONB_FIELDS = {"property", "property_search", "metadata"}


def _event_column(column: str) -> str:
    # The worker stores an absent JSONB value as JSON null (SQLAlchemy's default): read it as
    # SQL NULL, which spares decoding it (the body leaves both out).
    if column in _JSONB_FIELDS:
        return f"NULLIF(e.{column}, 'null')"
    # Read as NULL unless true: a body says "bot" only of a bot's events.
    if column == "bot":
        return "NULLIF(e.bot, false)"
    return f"e.{column}"


_EVENT = SelectList(
    {
        **columns(
            "e",
            "id",
            "tenant_id",
            "person_id",
            "company_id",
            "event_type",
            "occurred_at",
            "created_at",
            "was_person_created",
            "was_company_created",
        ),
        "match_conflict": "NULLIF(e.match_conflict, 'null')",
        **{column: _event_column(column) for column in _EVENT_FIELDS},
    }
)
_PERSON = SelectList(
    {
        **columns(
            "p",
            "id",
            "first_name",
            "last_name",
            "tags",
            "source",
            "stage",
            "company_id",
            "created_at",
            "updated_at",
        ),
        "external_id": "(SELECT x.value FROM person_external_ids x WHERE x.person_id = p.id)",
        "emails": contacts_of("person_emails"),
        "phones": contacts_of("person_phones"),
        "unverified_phones": (
            "(SELECT array_agg(ROW(x.value, x.type) ORDER BY x.created_at, x.value)"
            " FROM person_unverified_phones x WHERE x.person_id = p.id)"
        ),
    }
)
_COMPANY = SelectList(
    columns(
        "c",
        "id",
        "name",
        "website",
        "industry",
        "company_size",
        "description",
        "created_at",
        "updated_at",
    )
)

# Every event with its person (and contact points) and company in one round trip.
_OUTCOMES = f"""
SELECT {_EVENT.sql}, {_PERSON.sql}, {_COMPANY.sql}
FROM events e
LEFT JOIN people p ON p.id = e.person_id
LEFT JOIN companies c ON c.id = e.company_id
WHERE e.id = ANY($1::uuid[]) AND ($2::uuid IS NULL OR e.tenant_id = $2::uuid)
"""  # noqa: S608 (names from this module; values are parameters)
_IN_OUTCOME = {"person": len(_EVENT.columns), "company": len(_EVENT.columns) + len(_PERSON.columns)}

_DEAD_LETTERS = """
SELECT event_id, tenant_id, problem FROM dead_letters
WHERE event_id = ANY($1::uuid[]) AND ($2::uuid IS NULL OR tenant_id = $2::uuid)
"""


@functools.cache
def timeline_sql(*, by_type: bool, since: bool, before: bool, without_bots: bool) -> str:
    """A person's events, newest first: only the filters given, so even a generic plan of the
    prepared statement has each of them as an index condition (`$3 IS NULL OR ...` would be a
    filter over all the person's events). Parameters: tenant, person, then the filters given
    (type, since, the keyset position (occurred_at, id)), then the limit. Leaving bots out
    takes no parameter and filters the rows the index gives: few known people's events are a
    bot's, so few rows are read for nothing."""
    conditions = ["e.tenant_id = $1", "e.person_id = $2"]
    if without_bots:
        conditions.append("NOT e.bot")
    n = 2
    if by_type:
        n += 1
        conditions.append(f"e.event_type = ${n}")
    if since:
        n += 1
        conditions.append(f"e.occurred_at >= ${n}")
    if before:
        conditions.append(f"(e.occurred_at, e.id) < (${n + 1}, ${n + 2}::uuid)")
        n += 2
    where = " AND ".join(conditions)
    return (
        f"SELECT {_EVENT.sql} FROM events e WHERE {where}"  # noqa: S608 (names from this module)
        f" ORDER BY e.occurred_at DESC, e.id DESC LIMIT ${n + 1}"
    )


_PERSON_BY_ID_OR_IDENTITY = f"""
SELECT {_PERSON.sql} FROM people p
WHERE p.tenant_id = $1 AND p.id = COALESCE(
    $2::uuid,
    (SELECT person_id FROM person_emails WHERE tenant_id = $1 AND value = $3),
    (SELECT person_id FROM person_phones WHERE tenant_id = $1 AND value = $4),
    (SELECT person_id FROM person_external_ids WHERE tenant_id = $1 AND value = $5))
"""  # noqa: S608 (names from this module; values are parameters)

_COMPANY_BY_ID = f"""
SELECT {_COMPANY.sql} FROM companies c WHERE c.tenant_id = $1 AND c.id = $2
"""  # noqa: S608 (names from this module; values are parameters)

# Readers, by column name.
_EVENT_HEAD = _EVENT.get("id", "person_id", "company_id", "event_type", "occurred_at", "created_at")
_EVENT_ECHOED = _EVENT.get(*_EVENT_FIELDS)
_EVENT_WIRE_NAMES = tuple(_EVENT_FIELDS.values())
_EVENT_OUTCOME = _EVENT.get(
    "id",
    "tenant_id",
    "person_id",
    "company_id",
    "was_person_created",
    "was_company_created",
    "match_conflict",
)
_TIMELINE_POSITION = _EVENT.get("occurred_at", "id")
_PERSON_FIELDS = tuple(_PERSON.columns)  # a person's body: all of its SELECT list
_PERSON_ALONE = _PERSON.get(*_PERSON_FIELDS)
_PERSON_IN_OUTCOME = _PERSON.get(*_PERSON_FIELDS, start=_IN_OUTCOME["person"])
_COMPANY_FIELDS = tuple(_COMPANY.columns)
_COMPANY_ALONE = _COMPANY.get(*_COMPANY_FIELDS)
_COMPANY_IN_OUTCOME = _COMPANY.get(*_COMPANY_FIELDS, start=_IN_OUTCOME["company"])


def _event_body(row: Sequence[Any]) -> dict[str, Any]:
    event_id, person_id, company_id, event_type, occurred_at, created_at = _EVENT_HEAD(row)
    body: dict[str, Any] = {"id": str(event_id)}
    if person_id is not None:
        body["personId"] = str(person_id)
    if company_id is not None:
        body["companyId"] = str(company_id)
    body["eventType"] = event_type
    body["occurredAt"] = occurred_at.isoformat()
    body["createdAt"] = created_at.isoformat()
    for name, value in zip(_EVENT_WIRE_NAMES, _EVENT_ECHOED(row), strict=True):
        if value is not None:
            body[name] = value.isoformat() if isinstance(value, datetime) else value
    return body


def _contact_points(points: Sequence[Sequence[Any]] | None) -> list[dict[str, Any]]:
    result = []
    for value, kind, is_primary in points or ():
        point: dict[str, Any] = {"value": value, "isPrimary": is_primary}
        if kind is not None:
            point["type"] = kind
        result.append(point)
    return result


def _unverified_points(points: Sequence[Sequence[Any]] | None) -> list[dict[str, Any]]:
    """Numbers not valid for the tenant's region: shown after the others, never primary."""
    result = []
    for value, kind in points or ():
        point: dict[str, Any] = {"value": value, "isPrimary": False}
        if kind is not None:
            point["type"] = kind
        point["isVerified"] = False
        result.append(point)
    return result


def _person_body(row: Sequence[Any], get: Getter = _PERSON_ALONE) -> dict[str, Any]:
    (
        person_id,
        first_name,
        last_name,
        tags,
        source,
        stage,
        company_id,
        created_at,
        updated_at,
        external_id,
        emails,
        phones,
        unverified_phones,
    ) = get(row)
    name = " ".join(part for part in (first_name, last_name) if part) or None
    body: dict[str, Any] = {"id": str(person_id)}
    if external_id is not None:
        body["externalId"] = external_id
    for key, value in (("firstName", first_name), ("lastName", last_name), ("name", name)):
        if value is not None:
            body[key] = value
    body["emails"] = _contact_points(emails)
    body["phones"] = _contact_points(phones) + _unverified_points(unverified_phones)
    if tags:
        body["tags"] = list(tags)
    for key, value in (("source", source), ("stage", stage)):
        if value is not None:
            body[key] = value
    if company_id is not None:
        body["companyId"] = str(company_id)
    body["createdAt"] = created_at.isoformat()
    body["updatedAt"] = updated_at.isoformat()
    return body


def _company_body(row: Sequence[Any], get: Getter = _COMPANY_ALONE) -> dict[str, Any]:
    company_id, name, website, industry, company_size, description, created_at, updated_at = get(
        row
    )
    body: dict[str, Any] = {"id": str(company_id), "name": name}
    for key, value in (
        ("website", website),
        ("industry", industry),
        ("companySize", company_size),
        ("description", description),
    ):
        if value is not None:
            body[key] = value
    body["created"] = created_at.isoformat()
    body["updated"] = updated_at.isoformat()
    return body


_PERSON_PRESENT = _PERSON.get("id", start=_IN_OUTCOME["person"])
_COMPANY_PRESENT = _COMPANY.get("id", start=_IN_OUTCOME["company"])


async def load_outcomes(
    conn: AsyncConnection, event_ids: Iterable[UUID], *, tenant_id: UUID | None = None
) -> dict[UUID, StoredOutcome]:
    """The outcome of each stored or dead-lettered event; `tenant_id` limits it to one tenant."""
    ids = list(set(event_ids))
    if not ids:
        return {}
    # Arrays, not IN lists: one statement text whatever the batch size, prepared once.
    rows: Sequence[Sequence[Any]] = (await conn.exec_driver_sql(_OUTCOMES, (ids, tenant_id))).all()
    people: dict[UUID, dict[str, Any]] = {}
    companies: dict[UUID, dict[str, Any]] = {}
    outcomes: dict[UUID, StoredOutcome] = {}
    for row in rows:
        (
            event_id,
            event_tenant,
            person_id,
            company_id,
            was_person_created,
            was_company_created,
            match_conflict,
        ) = _EVENT_OUTCOME(row)
        body: dict[str, Any] = {"event": _event_body(row)}
        # A person or company deleted meanwhile leaves the id set and the join empty.
        if person_id is not None and _PERSON_PRESENT(row)[0] is not None:
            if person_id not in people:
                people[person_id] = _person_body(row, _PERSON_IN_OUTCOME)
            body["person"] = people[person_id]
        body["wasPersonCreated"] = was_person_created
        if was_company_created is not None:
            if company_id is not None and _COMPANY_PRESENT(row)[0] is not None:
                if company_id not in companies:
                    companies[company_id] = _company_body(row, _COMPANY_IN_OUTCOME)
                body["company"] = companies[company_id]
            body["wasCompanyCreated"] = was_company_created
        if match_conflict:
            body["matchConflict"] = {"otherPersonIds": match_conflict}
        created = was_person_created or bool(was_company_created)
        outcomes[event_id] = StoredOutcome(
            tenant_id=event_tenant,
            status="processed",
            http_status=201 if created else 200,
            body=body,
        )
    # A stored event wins over a dead letter of the same id: ask only for the others.
    missing = [i for i in ids if i not in outcomes]
    if missing:
        dead: Sequence[Sequence[Any]] = (
            await conn.exec_driver_sql(_DEAD_LETTERS, (missing, tenant_id))
        ).all()
        for event_id, dead_tenant, problem in dead:
            outcomes[event_id] = StoredOutcome(
                tenant_id=dead_tenant,
                status="failed",
                http_status=problem.get("status", 500),
                body=problem,
            )
    return outcomes


async def load_timeline(
    conn: AsyncConnection,
    *,
    tenant_id: UUID,
    person_id: UUID,
    event_type: str | None,
    since: datetime | None,
    before: tuple[datetime, UUID] | None,
    without_bots: bool,
    limit: int,
) -> list[tuple[dict[str, Any], tuple[datetime, UUID]]]:
    """Up to `limit` of a person's events, newest first, each with its keyset position."""
    sql = timeline_sql(
        by_type=event_type is not None,
        since=since is not None,
        before=bool(before),
        without_bots=without_bots,
    )
    params = [tenant_id, person_id, event_type, since, *(before or (None, None)), limit]
    rows: Sequence[Sequence[Any]] = (
        await conn.exec_driver_sql(sql, tuple(p for p in params if p is not None))
    ).all()
    return [(_event_body(row), _position(row)) for row in rows]


def _position(row: Sequence[Any]) -> tuple[datetime, UUID]:
    occurred_at, event_id = _TIMELINE_POSITION(row)
    return occurred_at, event_id


async def load_person(
    conn: AsyncConnection,
    *,
    tenant_id: UUID,
    person_id: UUID | None = None,
    email: str | None = None,
    phone: str | None = None,
    external_id: str | None = None,
) -> dict[str, Any] | None:
    """The tenant's person with this id, or owning this (normalised) e-mail, phone or
    external id."""
    row = (
        await conn.exec_driver_sql(
            _PERSON_BY_ID_OR_IDENTITY, (tenant_id, person_id, email, phone, external_id)
        )
    ).first()
    return _person_body(row) if row is not None else None


async def load_company(
    conn: AsyncConnection, *, tenant_id: UUID, company_id: UUID
) -> dict[str, Any] | None:
    row = (await conn.exec_driver_sql(_COMPANY_BY_ID, (tenant_id, company_id))).first()
    return _company_body(row) if row is not None else None
