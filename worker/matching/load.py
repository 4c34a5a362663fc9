"""What a batch may touch: the advisory locks it takes, then every row it reads under them.

Locking: every identity an event names (external id, e-mail, phone, company name or id,
personId, visitor, idempotency key) maps to a transaction-level advisory lock, and all of a
batch's locks are taken up front in one sorted statement. Rows that exist are then locked FOR
NO KEY UPDATE in id order, people before companies. Every transaction thus acquires its locks
in one global order, so batches cannot deadlock each other, and no identity can be created or
merged by two workers at once. Unique indexes remain the last line of defence: a violation
aborts the batch, which is rerun and sees the winner.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from shared.contract.queues import Envelope
from shared.db.locks import (
    company_id_lock,
    company_key_lock,
    email_lock,
    event_lock,
    external_id_lock,
    idempotency_lock,
    person_id_lock,
    phone_lock,
    visitor_lock,
)
from worker.matching.parse import ParsedEvent

Owners = Mapping[tuple[UUID, str], UUID]  # (tenant id, identity) -> the id that holds it


@dataclass(frozen=True, slots=True)
class PersonRow:
    """A person as locked, with its external id and whether it already has a primary e-mail
    and phone."""

    id: UUID
    tenant_id: UUID
    created_at: datetime
    first_name: str | None
    last_name: str | None
    tags: Sequence[str]
    source: str | None
    stage: str | None
    company_id: UUID | None
    external_id: str | None
    has_primary_email: bool
    has_primary_phone: bool


@dataclass(frozen=True, slots=True)
class CompanyRow:
    id: UUID
    tenant_id: UUID
    name: str
    name_key: str
    website: str | None
    industry: str | None
    company_size: str | None
    description: str | None


@dataclass(frozen=True)
class Found:
    """What the database holds for a batch, read under its locks; the rules never change it."""

    decided: frozenset[UUID] = frozenset()  # stored, or dead-lettered and not replayed
    first_by_key: Owners = field(default_factory=dict)  # the first event of an idempotency key
    external_owner: Owners = field(default_factory=dict)
    email_owner: Owners = field(default_factory=dict)
    phone_owner: Owners = field(default_factory=dict)
    visitor_person: Owners = field(default_factory=dict)
    people: Mapping[UUID, PersonRow] = field(default_factory=dict)
    companies: Mapping[UUID, CompanyRow] = field(default_factory=dict)


def lock_names(events: Iterable[ParsedEvent]) -> set[str]:
    """Advisory lock names for every identity the batch may read, create or merge."""
    names: set[str] = set()
    for item in events:
        t, e = item.tenant_id, item.event
        if e.person and e.person.external_id:
            names.add(external_id_lock(t, e.person.external_id))
        names.update(email_lock(t, c.value) for c in item.emails)
        names.update(phone_lock(t, c.value) for c in item.phones)
        if e.person_id:
            names.add(person_id_lock(t, e.person_id))
        if e.visitor_id:
            names.add(visitor_lock(t, e.visitor_id))
        if item.company_key:
            names.add(company_key_lock(t, item.company_key))
        if e.company and e.company.id:
            names.add(company_id_lock(t, e.company.id))
        if item.envelope.idempotency_key:
            names.add(idempotency_lock(t, item.envelope.idempotency_key))
        names.add(event_lock(item.envelope.id))
    return names


def lock_estimate(envelope: Envelope) -> int:
    """An upper bound of the locks `lock_names` takes for this event, read from its raw
    payload (before parsing, which needs the tenant's region from the database). Runs for
    every event of every message: plain lookups only."""
    payload = envelope.payload
    locks = (
        1  # the event
        + (payload.get("personId") is not None)
        + (payload.get("visitorId") is not None)
        + (envelope.idempotency_key is not None)
    )
    person = payload.get("person")
    if person:
        locks += (
            len(person.get("emails") or ())
            + len(person.get("phones") or ())
            + (person.get("externalId") is not None)
        )
    company = payload.get("company")
    if company:
        locks += (company.get("id") is not None) + (company.get("name") is not None)
    return locks


# Reads that lock nothing, in one round trip: decided events ("d"), then the owners of
# idempotency keys ("k"), e-mails ("e"), phones ("p"), visitors ("v") and external ids ("x"),
# each given as
# (tenant ids, values) arrays. Arrays keep one statement text, so it is prepared once.
_LOOKUP = """
SELECT 'd', NULL::uuid, NULL::text, id FROM events WHERE id = ANY($1::uuid[])
UNION ALL
SELECT 'd', NULL, NULL, event_id FROM dead_letters
WHERE event_id = ANY($1::uuid[]) AND replayed_at IS NULL
UNION ALL
SELECT 'k', tenant_id, key, event_id FROM idempotency_keys
WHERE (tenant_id, key) IN (SELECT * FROM unnest($2::uuid[], $3::text[]))
UNION ALL
SELECT 'e', tenant_id, value, person_id FROM person_emails
WHERE (tenant_id, value) IN (SELECT * FROM unnest($4::uuid[], $5::text[]))
UNION ALL
SELECT 'p', tenant_id, value, person_id FROM person_phones
WHERE (tenant_id, value) IN (SELECT * FROM unnest($6::uuid[], $7::text[]))
UNION ALL
SELECT 'v', tenant_id, visitor_id, person_id FROM visitors
WHERE (tenant_id, visitor_id) IN (SELECT * FROM unnest($8::uuid[], $9::text[]))
UNION ALL
SELECT 'x', tenant_id, value, person_id FROM person_external_ids
WHERE (tenant_id, value) IN (SELECT * FROM unnest($10::uuid[], $11::text[]))
"""

_LOCK_PEOPLE = """
SELECT p.id, p.tenant_id, p.created_at, p.first_name, p.last_name, COALESCE(p.tags, '{}'),
       p.source, p.stage, p.company_id,
       (SELECT x.value FROM person_external_ids x WHERE x.person_id = p.id),
       EXISTS (SELECT FROM person_emails x WHERE x.person_id = p.id AND x.is_primary),
       EXISTS (SELECT FROM person_phones x WHERE x.person_id = p.id AND x.is_primary)
FROM people p
WHERE (p.tenant_id, p.id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))
ORDER BY p.id
FOR NO KEY UPDATE OF p
"""
# _LOCK_PEOPLE's columns by name (four are expressions PostgreSQL would name "coalesce",
# "value" and "exists"), in its SELECT order.
_PERSON_COLUMNS = (
    "id",
    "tenant_id",
    "created_at",
    "first_name",
    "last_name",
    "tags",
    "source",
    "stage",
    "company_id",
    "external_id",
    "has_primary_email",
    "has_primary_phone",
)

# A UNION of two index lookups: an OR of two semi-joins would scan the table. Its columns are
# named as CompanyRow's fields.
_LOCK_COMPANIES = """
SELECT id, tenant_id, name, name_key, website, industry, company_size, description
FROM companies
WHERE id IN (
    SELECT c.id FROM companies c
    WHERE (c.tenant_id, c.id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))
    UNION
    SELECT c.id FROM companies c
    WHERE (c.tenant_id, c.name_key) IN (SELECT * FROM unnest($3::uuid[], $4::text[]))
)
ORDER BY id
FOR NO KEY UPDATE
"""


def _pairs(pairs: Iterable[tuple[UUID, Any]]) -> list[tuple[UUID, Any]]:
    return sorted(set(pairs), key=str)


async def load(
    conn: AsyncConnection, events: Sequence[ParsedEvent], event_ids: list[UUID]
) -> Found:
    """Read every row the batch can touch, locking the existing ones in id order.

    `event_ids` are all the batch's events (parsed or not), to tell which are decided already.
    """
    lookups = (
        _pairs(
            (i.tenant_id, i.envelope.idempotency_key) for i in events if i.envelope.idempotency_key
        ),
        _pairs((i.tenant_id, c.value) for i in events for c in i.emails),
        _pairs((i.tenant_id, c.value) for i in events for c in i.phones),
        _pairs((i.tenant_id, i.event.visitor_id) for i in events if i.event.visitor_id),
        _pairs(
            (i.tenant_id, i.event.person.external_id)
            for i in events
            if i.event.person and i.event.person.external_id
        ),
    )
    params: list[list[Any]] = [event_ids]
    for pairs in lookups:
        params += ([t for t, _ in pairs], [v for _, v in pairs])
    decided: set[UUID] = set()
    owners: dict[str, dict[tuple[UUID, str], UUID]] = {k: {} for k in "kepvx"}
    found: Sequence[Sequence[Any]] = (await conn.exec_driver_sql(_LOOKUP, tuple(params))).all()
    for kind, tenant_id, value, target in found:
        if kind == "d":
            decided.add(target)
        else:
            owners[kind][(tenant_id, value)] = target

    person_pairs = _pairs(
        [(i.tenant_id, i.event.person_id) for i in events if i.event.person_id]
        + [(t, p) for kind in "epvx" for (t, _), p in owners[kind].items()]
    )
    people: dict[UUID, PersonRow] = {}
    if person_pairs:
        rows = await conn.exec_driver_sql(
            _LOCK_PEOPLE, ([t for t, _ in person_pairs], [p for _, p in person_pairs])
        )
        for row in rows:
            person = PersonRow(**dict(zip(_PERSON_COLUMNS, row, strict=True)))
            people[person.id] = person

    by_id = _pairs(
        (i.tenant_id, i.event.company.id) for i in events if i.event.company and i.event.company.id
    )
    by_key = _pairs((i.tenant_id, i.company_key) for i in events if i.company_key)
    companies: dict[UUID, CompanyRow] = {}
    if by_id or by_key:
        rows = await conn.exec_driver_sql(
            _LOCK_COMPANIES,
            (
                [t for t, _ in by_id],
                [c for _, c in by_id],
                [t for t, _ in by_key],
                [k for _, k in by_key],
            ),
        )
        for row in rows:
            company = CompanyRow(**row._mapping)
            companies[company.id] = company
    return Found(
        decided=frozenset(decided),
        first_by_key=owners["k"],
        external_owner=owners["x"],
        email_owner=owners["e"],
        phone_owner=owners["p"],
        visitor_person=owners["v"],
        people=people,
        companies=companies,
    )
