"""Person and company matching for a batch of envelopes, in the caller's transaction.

Locking: every identity an event names (e-mail, phone, company name or id, personId, visitor,
idempotency key) maps to a transaction-level advisory lock, and all of a batch's locks are taken
up front in one sorted statement. Rows that exist are then locked FOR NO KEY UPDATE in id
order, people before companies. Every transaction thus acquires its locks in one global order,
so batches cannot deadlock each other, and no identity can be created or merged by two workers
at once. Unique indexes remain the last line of defence: a violation aborts the batch, which is
retried and sees the winner.

Processing is planned in memory and written with one statement per table, which is what makes
a batch fast. A poison event (an unexpected error) is isolated by the task, which reruns the
batch without it.
"""

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any, cast
from uuid import UUID

import orjson
import structlog
from pydantic import ValidationError
from sqlalchemy import CursorResult, Table, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.contract.events import TRUSTED, EmailIn, EventIn, PhoneIn
from shared.contract.outcomes import StoredOutcome
from shared.contract.problems import problem_body
from shared.contract.queues import Envelope
from shared.db.locks import event_lock_name, lock_all
from shared.db.reads import load_outcomes
from shared.db.tables import (
    Company,
    DeadLetter,
    Person,
    Tenant,
)
from shared.identity import company_key, normalize_phone
from shared.ids import new_id

log = structlog.get_logger(__name__)

# DeclarativeBase types __table__ as a FromClause; these are Tables.
people_t = cast(Table, Person.__table__)
companies_t = cast(Table, Company.__table__)
dead_t = cast(Table, DeadLetter.__table__)
tenants_t = cast(Table, Tenant.__table__)


class EventFailedError(Exception):
    """This event can never succeed as sent: it goes to the dead letters."""

    def __init__(self, reason: str, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.status, self.title, self.detail = reason, status, title, detail

    def problem(self, event_id: UUID) -> dict[str, Any]:
        return problem_body(
            self.status,
            self.title,
            self.detail,
            kind=self.reason.replace("_", "-"),
            extra={"eventId": str(event_id)},
        )


@dataclass(frozen=True)
class Contact:
    value: str
    is_primary: bool
    type: str | None


@dataclass
class PersonState:
    id: UUID
    tenant_id: UUID
    created_at: datetime
    first_name: str | None = None
    last_name: str | None = None
    tags: list[str] = field(default_factory=list)
    source: str | None = None
    stage: str | None = None
    company_id: UUID | None = None
    has_primary_email: bool = False
    has_primary_phone: bool = False
    new: bool = False
    dirty: bool = False


@dataclass
class CompanyState:
    id: UUID
    tenant_id: UUID
    name: str
    name_key: str
    website: str | None = None
    industry: str | None = None
    company_size: str | None = None
    description: str | None = None
    new: bool = False
    dirty: bool = False


@dataclass
class Item:
    """One envelope with its payload parsed and identities normalised for its tenant."""

    envelope: Envelope
    event: EventIn
    emails: list[Contact]
    phones: list[Contact]
    company_key: str | None

    @property
    def tenant_id(self) -> UUID:
        return self.envelope.tenant_id


@dataclass
class BatchResult:
    outcomes: dict[UUID, StoredOutcome]
    created_events: int
    replayed_events: int
    failed_events: int


def _contacts(raw: Sequence[EmailIn | PhoneIn], normalize: Callable[[str], str]) -> list[Contact]:
    """Normalised, de-duplicated contact points; exactly one primary (first marked, else first)."""
    seen: dict[str, Contact] = {}
    marked: str | None = None
    for entry in raw:
        value, flagged, kind = normalize(entry.value), bool(entry.is_primary), entry.type
        if value in seen:
            continue
        seen[value] = Contact(value, False, kind)
        if flagged and marked is None:
            marked = value
    primary = marked or next(iter(seen), None)
    return [Contact(c.value, c.value == primary, c.type) for c in seen.values()]


def parse(envelope: Envelope, region: str) -> Item:
    """Validate the payload with the public schema; raise EventFailedError if it cannot be read."""
    try:
        event = EventIn.model_validate(envelope.payload, context=TRUSTED)
    except ValidationError as exc:
        raise EventFailedError(
            "invalid_payload", 422, "Invalid payload", f"the worker cannot read this event: {exc}"
        ) from None
    person = event.person
    emails = _contacts(person.emails, lambda v: v) if person else []
    phones = _contacts(person.phones, lambda v: normalize_phone(v, region)) if person else []
    key = company_key(event.company.name) if event.company and event.company.name else None
    return Item(envelope, event, emails, phones, key)


def lock_names(items: Iterable[Item]) -> set[str]:
    """Advisory lock names for every identity the batch may read, create or merge."""
    names: set[str] = set()
    for item in items:
        t, e = item.tenant_id, item.event
        names.update(f"{t}|e|{c.value}" for c in item.emails)
        names.update(f"{t}|p|{c.value}" for c in item.phones)
        if e.person_id:
            names.add(f"{t}|pi|{e.person_id}")
        if e.visitor_id:
            names.add(f"{t}|v|{e.visitor_id}")
        if item.company_key:
            names.add(f"{t}|c|{item.company_key}")
        if e.company and e.company.id:
            names.add(f"{t}|ci|{e.company.id}")
        if item.envelope.idempotency_key:
            names.add(f"{t}|k|{item.envelope.idempotency_key}")
        names.add(event_lock_name(item.envelope.id))
    return names


def _pairs(pairs: Iterable[tuple[UUID, Any]]) -> list[tuple[UUID, Any]]:
    return sorted(set(pairs), key=str)


_REGION_TTL = 60.0
_regions: dict[UUID, tuple[str, float]] = {}


async def tenant_regions(conn: AsyncConnection, tenant_ids: Iterable[UUID]) -> dict[UUID, str]:
    """Each tenant's phone region; remembered for a minute, since tenants change rarely."""
    now = time.monotonic()
    wanted = set(tenant_ids)
    missing = {t for t in wanted if t not in _regions or _regions[t][1] < now}
    if missing:
        rows = await conn.execute(
            select(tenants_t.c.id, tenants_t.c.default_region).where(tenants_t.c.id.in_(missing))
        )
        found = {row.id: row.default_region for row in rows}
        for tenant in missing:
            if tenant in found:
                _regions[tenant] = (found[tenant], now + _REGION_TTL)
            else:
                _regions.pop(tenant, None)
    return {t: _regions[t][0] for t in wanted if t in _regions}


# Reads that lock nothing, in one round trip: decided events ("d"), then the owners of
# idempotency keys ("k"), e-mails ("e"), phones ("p") and visitors ("v"), each given as
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
"""

# Columns in PersonState's field order.
_LOCK_PEOPLE = """
SELECT p.id, p.tenant_id, p.created_at, p.first_name, p.last_name, COALESCE(p.tags, '{}'),
       p.source, p.stage, p.company_id,
       EXISTS (SELECT FROM person_emails x WHERE x.person_id = p.id AND x.is_primary),
       EXISTS (SELECT FROM person_phones x WHERE x.person_id = p.id AND x.is_primary)
FROM people p
WHERE (p.tenant_id, p.id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))
ORDER BY p.id
FOR NO KEY UPDATE OF p
"""

# Columns in CompanyState's field order. A UNION of two index lookups: an OR of two
# semi-joins would scan the table.
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


class Batch:
    """The in-memory plan of one batch: what was found, then what to write."""

    def __init__(self, conn: AsyncConnection, items: list[Item], now: datetime) -> None:
        self.conn, self.items, self.now = conn, items, now
        self.email_owner: dict[tuple[UUID, str], UUID] = {}
        self.phone_owner: dict[tuple[UUID, str], UUID] = {}
        self.visitor_person: dict[tuple[UUID, str], UUID] = {}
        self.people: dict[UUID, PersonState] = {}
        self.companies: dict[UUID, CompanyState] = {}
        self.company_by_key: dict[tuple[UUID, str], UUID] = {}
        self.new_emails: list[dict[str, Any]] = []
        self.new_phones: list[dict[str, Any]] = []
        self.visitor_rows: dict[tuple[UUID, str], dict[str, Any]] = {}
        self.event_rows: list[dict[str, Any]] = []
        self.idem_rows: list[dict[str, Any]] = []
        self.dead_rows: list[dict[str, Any]] = []

    async def load(self, event_ids: list[UUID]) -> tuple[set[UUID], dict[tuple[UUID, str], UUID]]:
        """Read every row the batch can touch, locking the existing ones in id order.

        Returns the events already decided (stored, or dead-lettered and not replayed) and
        the first event of each idempotency key.
        """
        conn, items = self.conn, self.items
        lookups = (
            _pairs(
                (i.tenant_id, i.envelope.idempotency_key)
                for i in items
                if i.envelope.idempotency_key
            ),
            _pairs((i.tenant_id, c.value) for i in items for c in i.emails),
            _pairs((i.tenant_id, c.value) for i in items for c in i.phones),
            _pairs((i.tenant_id, i.event.visitor_id) for i in items if i.event.visitor_id),
        )
        params: list[list[Any]] = [event_ids]
        for pairs in lookups:
            params += ([t for t, _ in pairs], [v for _, v in pairs])
        done_ids: set[UUID] = set()
        first_by_key: dict[tuple[UUID, str], UUID] = {}
        found = {
            "k": first_by_key,
            "e": self.email_owner,
            "p": self.phone_owner,
            "v": self.visitor_person,
        }
        found_rows: Sequence[Sequence[Any]] = (
            await conn.exec_driver_sql(_LOOKUP, tuple(params))
        ).all()
        for kind, tenant_id, value, target in found_rows:
            if kind == "d":
                done_ids.add(target)
            else:
                found[kind][(tenant_id, value)] = target

        person_pairs = _pairs(
            [(i.tenant_id, i.event.person_id) for i in items if i.event.person_id]
            + [(t, p) for (t, _), p in self.email_owner.items()]
            + [(t, p) for (t, _), p in self.phone_owner.items()]
            + [(t, p) for (t, _), p in self.visitor_person.items()]
        )
        if person_pairs:
            people: Sequence[Sequence[Any]] = (
                await conn.exec_driver_sql(
                    _LOCK_PEOPLE, ([t for t, _ in person_pairs], [p for _, p in person_pairs])
                )
            ).all()
            for r in people:
                self.people[r[0]] = PersonState(*r)

        by_id = _pairs(
            (i.tenant_id, i.event.company.id)
            for i in items
            if i.event.company and i.event.company.id
        )
        by_key = _pairs((i.tenant_id, i.company_key) for i in items if i.company_key)
        if by_id or by_key:
            companies: Sequence[Sequence[Any]] = (
                await conn.exec_driver_sql(
                    _LOCK_COMPANIES,
                    (
                        [t for t, _ in by_id],
                        [c for _, c in by_id],
                        [t for t, _ in by_key],
                        [k for _, k in by_key],
                    ),
                )
            ).all()
            for r in companies:
                company = CompanyState(*r)
                self.companies[company.id] = company
                self.company_by_key[(company.tenant_id, company.name_key)] = company.id
        return done_ids, first_by_key

    # Resolution ----------------------------------------------------------------------------

    def _oldest(self, ids: Iterable[UUID]) -> PersonState:
        return min((self.people[i] for i in ids), key=lambda p: (p.created_at, str(p.id)))

    def _best_match(
        self, item: Item, contacts: list[Contact], owners: dict[Any, UUID]
    ) -> UUID | None:
        found = [
            owners[(item.tenant_id, c.value)]
            for c in contacts
            if (item.tenant_id, c.value) in owners
        ]
        if not found:
            return None
        primary = next((c for c in contacts if c.is_primary), None)
        if primary and (item.tenant_id, primary.value) in owners:
            return owners[(item.tenant_id, primary.value)]
        return self._oldest(found).id

    def resolve_person(self, item: Item) -> tuple[PersonState | None, bool, list[UUID]]:
        """The event's person (existing, matched or created), whether it was created, conflicts."""
        t, e = item.tenant_id, item.event
        if e.person_id is not None:
            person = self.people.get(e.person_id)
            if person is None or person.tenant_id != t:
                raise EventFailedError(
                    "person_not_found",
                    404,
                    "Person not found",
                    f"no person {e.person_id} in this tenant",
                )
            chosen: UUID | None = person.id
        else:
            chosen = (
                self._best_match(item, item.emails, self.email_owner)
                or self._best_match(item, item.phones, self.phone_owner)
                or (self.visitor_person.get((t, e.visitor_id)) if e.visitor_id else None)
            )
        created = False
        if chosen is None:
            if e.person is None or not e.person.has_identity():
                return None, False, []
            person = PersonState(id=new_id(), tenant_id=t, created_at=self.now, new=True)
            self.people[person.id] = person
            created = True
        else:
            person = self.people[chosen]
        others = {
            owner
            for contacts, owners in (
                (item.emails, self.email_owner),
                (item.phones, self.phone_owner),
            )
            for c in contacts
            if (owner := owners.get((t, c.value))) is not None and owner != person.id
        }
        if e.person is not None:
            self._merge(person, item)
        return person, created, sorted(others, key=str)

    def _merge(self, person: PersonState, item: Item) -> None:
        """Add unclaimed e-mails and phones, fill empty fields; never overwrite or steal."""
        data = item.event.person
        assert data is not None
        changed = False
        for name in ("first_name", "last_name", "source", "stage"):
            value = getattr(data, name)
            if value and getattr(person, name) is None:
                setattr(person, name, value)
                changed = True
        new_tags = [tag for tag in dict.fromkeys(data.tags) if tag not in person.tags]
        if new_tags:
            person.tags = [*person.tags, *new_tags]
            changed = True
        for contacts, owners, flag, rows in (
            (item.emails, self.email_owner, "has_primary_email", self.new_emails),
            (item.phones, self.phone_owner, "has_primary_phone", self.new_phones),
        ):
            for c in contacts:
                key = (person.tenant_id, c.value)
                if key in owners:
                    continue
                primary = c.is_primary and not getattr(person, flag)
                if primary:
                    setattr(person, flag, True)
                owners[key] = person.id
                rows.append(
                    {
                        "tenant_id": person.tenant_id,
                        "value": c.value,
                        "person_id": person.id,
                        "type": c.type,
                        "is_primary": primary,
                        "created_at": self.now,
                    }
                )
                changed = True
        if changed and not person.new:
            person.dirty = True

    def check_company(self, item: Item) -> None:
        company = item.event.company
        if company is not None and company.id is not None:
            found = self.companies.get(company.id)
            if found is None or found.tenant_id != item.tenant_id:
                raise EventFailedError(
                    "company_not_found",
                    404,
                    "Company not found",
                    f"no company {company.id} in this tenant",
                )

    def resolve_company(self, item: Item) -> tuple[CompanyState | None, bool]:
        data, t = item.event.company, item.tenant_id
        if data is None:
            return None, False
        created = False
        if data.id is not None:
            company = self.companies[data.id]
        elif (found := self.company_by_key.get((t, item.company_key or ""))) is not None:
            company = self.companies[found]
        else:
            assert data.name is not None and item.company_key is not None
            company = CompanyState(
                id=new_id(),
                tenant_id=t,
                name=" ".join(data.name.split()),
                name_key=item.company_key,
                new=True,
            )
            self.companies[company.id] = company
            self.company_by_key[(t, company.name_key)] = company.id
            created = True
        for name in ("website", "industry", "company_size", "description"):
            value = getattr(data, name)
            if value and getattr(company, name) is None:
                setattr(company, name, value)
                company.dirty = not company.new
        return company, created

    def add_event(self, item: Item) -> None:
        """Resolve the event's person and company and plan its row; EventFailedError if it can't."""
        env, e, t = item.envelope, item.event, item.tenant_id
        self.check_company(item)
        person, person_created, conflicts = self.resolve_person(item)
        company, company_created = self.resolve_company(item)
        if person is not None and company is not None and person.company_id != company.id:
            person.company_id = company.id
            person.dirty = not person.new
        if person is not None and e.visitor_id is not None:
            self.visitor_person[(t, e.visitor_id)] = person.id
            self.visitor_rows[(t, e.visitor_id)] = {
                "tenant_id": t,
                "visitor_id": e.visitor_id,
                "person_id": person.id,
                "updated_at": self.now,
            }
        occurred = e.occurred_at or env.received_at
        if e.occurred_at is not None and e.sent_at is not None:
            with contextlib.suppress(OverflowError):  # an absurd skew is left uncorrected
                occurred = e.occurred_at + (env.received_at - e.sent_at)
        self.event_rows.append(
            {
                "id": env.id,
                "tenant_id": t,
                "person_id": person.id if person else None,
                "company_id": company.id if company else None,
                "visitor_id": e.visitor_id,
                "event_type": e.type,
                "occurred_at": occurred,
                "received_at": env.received_at,
                "created_at": self.now,
                "idempotency_key": env.idempotency_key,
                "source": e.source,
                "page_url": e.page_url,
                "page_title": e.page_title,
                "page_referrer": e.page_referrer,
                "page_duration": e.page_duration,
                "property": _json(e.property),
                "property_search": _json(e.property_search),
                "message": e.message,
                "metadata": e.metadata,
                "ip_address": str(e.ip_address) if e.ip_address is not None else None,
                "user_agent": e.user_agent,
                "was_person_created": person_created,
                "was_company_created": company_created if company is not None else None,
                "match_conflict": [str(i) for i in conflicts] or None,
            }
        )
        if env.idempotency_key is not None:
            self.idem_rows.append(
                {
                    "tenant_id": t,
                    "key": env.idempotency_key,
                    "event_id": env.id,
                    "created_at": self.now,
                }
            )

    def add_failure(self, envelope: Envelope, error: EventFailedError) -> None:
        self.dead_rows.append(
            {
                "event_id": envelope.id,
                "tenant_id": envelope.tenant_id,
                "reason": error.reason,
                "problem": error.problem(envelope.id),
                "envelope": _storable(envelope.to_wire()),
                "failed_at": self.now,
                "replayed_at": None,
            }
        )

    # Writing -------------------------------------------------------------------------------

    async def write(self) -> None:
        """One statement per table, parents before children."""
        conn = self.conn
        await _insert_and_update(conn, companies_t, self.companies.values(), self._company_row)
        await _insert_and_update(conn, people_t, self.people.values(), self._person_row)
        for statement, rows in (
            (_INSERT_EMAILS, self.new_emails),
            (_INSERT_PHONES, self.new_phones),
        ):
            if rows:
                await statement.run(conn, rows)
        if self.visitor_rows:
            await _UPSERT_VISITORS.run(conn, list(self.visitor_rows.values()))
        if self.event_rows:
            inserted = (await _INSERT_EVENTS.run(conn, self.event_rows)).all()
            if len(inserted) != len(self.event_rows):
                # Only possible if locking was bypassed: abort, and the retry sees the winner.
                raise DuplicateEventError(f"{len(self.event_rows) - len(inserted)} events existed")
        if self.visitor_rows:
            # Earlier anonymous events of a visitor now known belong to that person.
            rows = list(self.visitor_rows.values())
            await conn.exec_driver_sql(
                _BACKFILL,
                (
                    [r["tenant_id"] for r in rows],
                    [r["visitor_id"] for r in rows],
                    [r["person_id"] for r in rows],
                ),
            )
        if self.idem_rows:
            await _INSERT_IDEMPOTENCY_KEYS.run(conn, self.idem_rows)
        if self.dead_rows:
            stmt = pg_insert(dead_t)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[dead_t.c.event_id],
                    set_={
                        "reason": stmt.excluded.reason,
                        "problem": stmt.excluded.problem,
                        "envelope": stmt.excluded.envelope,
                        "failed_at": stmt.excluded.failed_at,
                        "replayed_at": None,
                    },
                ),
                self.dead_rows,
            )

    def _person_row(self, p: PersonState) -> dict[str, Any]:
        return {
            "id": p.id,
            "tenant_id": p.tenant_id,
            "first_name": p.first_name,
            "last_name": p.last_name,
            "tags": p.tags,
            "source": p.source,
            "stage": p.stage,
            "company_id": p.company_id,
            "created_at": p.created_at,
            "updated_at": self.now,
        }

    def _company_row(self, c: CompanyState) -> dict[str, Any]:
        return {
            "id": c.id,
            "tenant_id": c.tenant_id,
            "name": c.name,
            "name_key": c.name_key,
            "website": c.website,
            "industry": c.industry,
            "company_size": c.company_size,
            "description": c.description,
            "created_at": self.now,
            "updated_at": self.now,
        }


_BACKFILL = """
UPDATE events SET person_id = v.person_id
FROM unnest($1::uuid[], $2::text[], $3::uuid[]) AS v(tenant_id, visitor_id, person_id)
WHERE events.tenant_id = v.tenant_id AND events.visitor_id = v.visitor_id
  AND events.person_id IS NULL
"""


@dataclass(frozen=True)
class _BulkInsert:
    """INSERT ... SELECT FROM json_to_recordset(the rows as one JSON document).

    orjson encodes a batch several times faster than asyncpg encodes one array per column,
    and the statement text does not depend on the row count, so it is prepared once.
    """

    table: str
    columns: dict[str, str]  # name -> PostgreSQL type
    tail: str = ""

    @cached_property
    def sql(self) -> str:
        # A JSON null becomes SQL NULL here; JSONB columns keep storing JSON null for None,
        # as SQLAlchemy did.
        values = ", ".join(
            f"COALESCE(u.{c}, 'null')" if kind == "jsonb" else f"u.{c}"
            for c, kind in self.columns.items()
        )
        names = ", ".join(self.columns)
        record = ", ".join(f"{c} {kind}" for c, kind in self.columns.items())
        source = f"json_to_recordset($1::text::json) AS u({record})"
        # Names come from the constants below; every value travels in the parameter.
        return f"INSERT INTO {self.table} ({names}) SELECT {values} FROM {source} {self.tail}"  # noqa: S608

    async def run(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> CursorResult[Any]:
        return await conn.exec_driver_sql(
            self.sql, (orjson.dumps(rows, default=_uuid_text).decode(),)
        )


def _uuid_text(value: object) -> str:
    # orjson serialises uuid.UUID itself, not asyncpg's subclass (ids read from the database).
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_CONTACT_COLUMNS = {
    "tenant_id": "uuid",
    "value": "text",
    "person_id": "uuid",
    "type": "text",
    "is_primary": "bool",
    "created_at": "timestamptz",
}
_INSERT_EMAILS = _BulkInsert("person_emails", _CONTACT_COLUMNS)
_INSERT_PHONES = _BulkInsert("person_phones", _CONTACT_COLUMNS)
_UPSERT_VISITORS = _BulkInsert(
    "visitors",
    {"tenant_id": "uuid", "visitor_id": "text", "person_id": "uuid", "updated_at": "timestamptz"},
    "ON CONFLICT (tenant_id, visitor_id) DO UPDATE"
    " SET person_id = excluded.person_id, updated_at = excluded.updated_at",
)
_INSERT_EVENTS = _BulkInsert(
    "events",
    {
        "id": "uuid",
        "tenant_id": "uuid",
        "person_id": "uuid",
        "company_id": "uuid",
        "visitor_id": "text",
        "event_type": "text",
        "occurred_at": "timestamptz",
        "received_at": "timestamptz",
        "created_at": "timestamptz",
        "idempotency_key": "text",
        "source": "text",
        "page_url": "text",
        "page_title": "text",
        "page_referrer": "text",
        "page_duration": "int",
        "property": "jsonb",
        "property_search": "jsonb",
        "message": "text",
        "metadata": "jsonb",
        "ip_address": "text",
        "user_agent": "text",
        "was_person_created": "bool",
        "was_company_created": "bool",
        "match_conflict": "jsonb",
    },
    "ON CONFLICT DO NOTHING RETURNING id",
)
_INSERT_IDEMPOTENCY_KEYS = _BulkInsert(
    "idempotency_keys",
    {"tenant_id": "uuid", "key": "text", "event_id": "uuid", "created_at": "timestamptz"},
)


class PoisonEventError(Exception):
    """An unexpected error while planning one event (a bug); the batch is rerun without it."""

    def __init__(self, event_id: UUID, error: Exception) -> None:
        super().__init__(f"event {event_id}: {error!r}")
        self.event_id, self.error = event_id, error


class DuplicateEventError(Exception):
    """An event row appeared under our locks; retrying the batch is always safe."""


async def _insert_and_update(
    conn: AsyncConnection, table: Any, states: Iterable[Any], to_row: Any
) -> None:
    new, dirty = [], []
    for state in states:
        if state.new:
            new.append(to_row(state))
        elif state.dirty:
            dirty.append(to_row(state))
    if new:
        await conn.execute(insert(table), new)
    if dirty:
        columns = [c for c in dirty[0] if c not in ("id", "tenant_id", "created_at")]
        await conn.execute(
            update(table)
            .where(table.c.id == bindparam("b_id"))
            .values({c: bindparam(c) for c in columns}),
            [{"b_id": row["id"], **{c: row[c] for c in columns}} for row in dirty],
        )


def _storable(value: Any) -> Any:
    """PostgreSQL refuses NUL in text and JSON: keep a dead letter storable whatever it holds."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def _json(model: Any) -> dict[str, Any] | None:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True) if model else None


async def process_batch(
    conn: AsyncConnection,
    envelopes: Sequence[Envelope],
    *,
    now: datetime,
    poisoned: dict[UUID, EventFailedError] | None = None,
) -> BatchResult:
    """Match, write and return the outcome of every envelope, inside the caller's transaction.

    `poisoned` names events that failed this batch before; they are dead-lettered, not retried.
    """
    poisoned = poisoned or {}
    regions = await tenant_regions(conn, {e.tenant_id for e in envelopes})
    items: list[Item] = []
    failures: list[tuple[Envelope, EventFailedError]] = []
    for envelope in envelopes:
        if envelope.id in poisoned:
            failures.append((envelope, poisoned[envelope.id]))
        elif envelope.tenant_id not in regions:
            failures.append(
                (
                    envelope,
                    EventFailedError(
                        "tenant_not_found",
                        404,
                        "Tenant not found",
                        "the event's tenant does not exist",
                    ),
                )
            )
        else:
            try:
                items.append(parse(envelope, regions[envelope.tenant_id]))
            except EventFailedError as exc:
                failures.append((envelope, exc))

    batch = Batch(conn, items, now)
    await lock_all(conn, lock_names(items) | {event_lock_name(e.id) for e, _ in failures})
    done_ids, first_by_key = await batch.load([e.id for e in envelopes])

    answer_with: dict[UUID, UUID] = {}  # event id -> the event whose outcome answers it
    for envelope, error in failures:
        if envelope.id not in done_ids:
            batch.add_failure(envelope, error)
            done_ids.add(envelope.id)
        answer_with[envelope.id] = envelope.id
    created = replayed = 0
    for item in items:
        env = item.envelope
        key = (item.tenant_id, env.idempotency_key) if env.idempotency_key else None
        first = first_by_key.get(key) if key else None
        if env.id in done_ids:
            replayed += 1
            answer_with[env.id] = env.id
        elif first is not None and first != env.id:
            replayed += 1
            answer_with[env.id] = first
        else:
            try:
                batch.add_event(item)
                created += 1
            except EventFailedError as exc:
                batch.add_failure(env, exc)
            except Exception as exc:
                # The plan may be half-changed: the caller reruns the batch without this event.
                raise PoisonEventError(env.id, exc) from exc
            done_ids.add(env.id)
            if key:
                first_by_key[key] = env.id
            answer_with[env.id] = env.id
    await batch.write()
    stored = await load_outcomes(conn, set(answer_with.values()))
    outcomes = {eid: stored[src] for eid, src in answer_with.items() if src in stored}
    return BatchResult(outcomes, created, replayed, len(batch.dead_rows))
