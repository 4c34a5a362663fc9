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
from typing import Any
from uuid import UUID

import structlog
from pydantic import ValidationError
from sqlalchemy import bindparam, exists, insert, or_, select, text, tuple_, union_all, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.identity import company_key, normalize_phone
from shared.ids import new_event_id
from shared.locks import event_lock_name, lock_all
from shared.models import (
    Company,
    DeadLetter,
    Event,
    IdempotencyKey,
    Person,
    PersonEmail,
    PersonPhone,
    Tenant,
    Visitor,
)
from shared.outcomes import StoredOutcome
from shared.queue import Envelope
from shared.repository import load_outcomes
from shared.schemas import TRUSTED, EmailIn, EventIn, PhoneIn

log = structlog.get_logger(__name__)

people_t = Person.__table__
emails_t = PersonEmail.__table__
phones_t = PersonPhone.__table__
companies_t = Company.__table__
events_t = Event.__table__
visitors_t = Visitor.__table__
idem_t = IdempotencyKey.__table__
dead_t = DeadLetter.__table__
tenants_t = Tenant.__table__

PROBLEM_BASE = "https://leadstream.dev/problems/"


class EventFailedError(Exception):
    """This event can never succeed as sent: it goes to the dead letters."""

    def __init__(self, reason: str, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.status, self.title, self.detail = reason, status, title, detail

    def problem(self, event_id: UUID) -> dict[str, Any]:
        return {
            "type": PROBLEM_BASE + self.reason.replace("_", "-"),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "eventId": str(event_id),
        }


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

    async def load(self) -> None:
        """Read every row the batch can touch, locking the existing ones in id order."""
        conn, items = self.conn, self.items
        emails = _pairs((i.tenant_id, c.value) for i in items for c in i.emails)
        phones = _pairs((i.tenant_id, c.value) for i in items for c in i.phones)
        visitors = _pairs((i.tenant_id, i.event.visitor_id) for i in items if i.event.visitor_id)
        for pairs, table, target in (
            (emails, emails_t, self.email_owner),
            (phones, phones_t, self.phone_owner),
        ):
            if pairs:
                rows = await conn.execute(
                    select(table.c.tenant_id, table.c.value, table.c.person_id).where(
                        tuple_(table.c.tenant_id, table.c.value).in_(pairs)
                    )
                )
                target.update({(r.tenant_id, r.value): r.person_id for r in rows})
        if visitors:
            rows = await conn.execute(
                select(visitors_t).where(
                    tuple_(visitors_t.c.tenant_id, visitors_t.c.visitor_id).in_(visitors)
                )
            )
            self.visitor_person.update({(r.tenant_id, r.visitor_id): r.person_id for r in rows})

        person_pairs = _pairs(
            [(i.tenant_id, i.event.person_id) for i in items if i.event.person_id]
            + [(t, p) for (t, _), p in self.email_owner.items()]
            + [(t, p) for (t, _), p in self.phone_owner.items()]
            + [(t, p) for (t, _), p in self.visitor_person.items()]
        )
        if person_pairs:
            has_primary = {
                f"has_primary_{kind}": exists().where(
                    table.c.person_id == people_t.c.id, table.c.is_primary
                )
                for kind, table in (("email", emails_t), ("phone", phones_t))
            }
            rows = await conn.execute(
                select(people_t, *(e.label(name) for name, e in has_primary.items()))
                .where(tuple_(people_t.c.tenant_id, people_t.c.id).in_(person_pairs))
                .order_by(people_t.c.id)
                .with_for_update(of=people_t, key_share=True)
            )
            for r in rows:
                self.people[r.id] = PersonState(
                    id=r.id,
                    tenant_id=r.tenant_id,
                    created_at=r.created_at,
                    first_name=r.first_name,
                    last_name=r.last_name,
                    tags=list(r.tags or []),
                    source=r.source,
                    stage=r.stage,
                    company_id=r.company_id,
                    has_primary_email=r.has_primary_email,
                    has_primary_phone=r.has_primary_phone,
                )

        by_id = _pairs(
            (i.tenant_id, i.event.company.id)
            for i in items
            if i.event.company and i.event.company.id
        )
        by_key = _pairs((i.tenant_id, i.company_key) for i in items if i.company_key)
        if by_id or by_key:
            conditions = []
            if by_id:
                conditions.append(tuple_(companies_t.c.tenant_id, companies_t.c.id).in_(by_id))
            if by_key:
                conditions.append(
                    tuple_(companies_t.c.tenant_id, companies_t.c.name_key).in_(by_key)
                )
            rows = await conn.execute(
                select(companies_t)
                .where(or_(*conditions))
                .order_by(companies_t.c.id)
                .with_for_update(key_share=True)
            )
            for r in rows:
                self.companies[r.id] = CompanyState(
                    id=r.id,
                    tenant_id=r.tenant_id,
                    name=r.name,
                    name_key=r.name_key,
                    website=r.website,
                    industry=r.industry,
                    company_size=r.company_size,
                    description=r.description,
                )
                self.company_by_key[(r.tenant_id, r.name_key)] = r.id

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
            person = PersonState(id=new_event_id(), tenant_id=t, created_at=self.now, new=True)
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
                id=new_event_id(),
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
        for table, rows in ((emails_t, self.new_emails), (phones_t, self.new_phones)):
            if rows:
                await conn.execute(insert(table), rows)
        if self.visitor_rows:
            stmt = pg_insert(visitors_t)
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[visitors_t.c.tenant_id, visitors_t.c.visitor_id],
                    set_={
                        "person_id": stmt.excluded.person_id,
                        "updated_at": stmt.excluded.updated_at,
                    },
                ),
                list(self.visitor_rows.values()),
            )
        if self.event_rows:
            inserted = (
                await conn.execute(
                    pg_insert(events_t).on_conflict_do_nothing().returning(events_t.c.id),
                    self.event_rows,
                )
            ).all()
            if len(inserted) != len(self.event_rows):
                # Only possible if locking was bypassed: abort, and the retry sees the winner.
                raise DuplicateEventError(f"{len(self.event_rows) - len(inserted)} events existed")
        if self.visitor_rows:
            # Earlier anonymous events of a visitor now known belong to that person.
            rows = list(self.visitor_rows.values())
            await conn.execute(
                _BACKFILL,
                {
                    "tenants": [r["tenant_id"] for r in rows],
                    "visitors": [r["visitor_id"] for r in rows],
                    "people": [r["person_id"] for r in rows],
                },
            )
        if self.idem_rows:
            await conn.execute(insert(idem_t), self.idem_rows)
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


_BACKFILL = text(
    """
    UPDATE events SET person_id = v.person_id
    FROM unnest(CAST(:tenants AS uuid[]), CAST(:visitors AS text[]), CAST(:people AS uuid[]))
        AS v(tenant_id, visitor_id, person_id)
    WHERE events.tenant_id = v.tenant_id AND events.visitor_id = v.visitor_id
      AND events.person_id IS NULL
    """
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
    ids = [e.id for e in envelopes]
    decided = union_all(
        select(events_t.c.id).where(events_t.c.id.in_(ids)),
        select(dead_t.c.event_id).where(dead_t.c.event_id.in_(ids), dead_t.c.replayed_at.is_(None)),
    )
    done_ids = set((await conn.execute(decided)).scalars())
    idem_pairs = _pairs(
        (i.tenant_id, i.envelope.idempotency_key) for i in items if i.envelope.idempotency_key
    )
    first_by_key: dict[tuple[UUID, str], UUID] = {}
    if idem_pairs:
        rows = await conn.execute(
            select(idem_t).where(tuple_(idem_t.c.tenant_id, idem_t.c.key).in_(idem_pairs))
        )
        first_by_key = {(r.tenant_id, r.key): r.event_id for r in rows}
    await batch.load()

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
