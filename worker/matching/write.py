"""Writing a plan: one statement per table, parents before children."""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, TypeVar
from uuid import UUID

import orjson
from sqlalchemy import CursorResult, Table, bindparam, insert, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from shared.db.tables import companies_t, dead_letters_t, people_t
from worker.errors import DuplicateEventError
from worker.matching.rules import Plan
from worker.matching.states import CompanyState, PersonState

_State = TypeVar("_State", PersonState, CompanyState)


async def write(conn: AsyncConnection, plan: Plan, *, backfill_rows: int) -> bool:
    """Store every row the plan holds, one statement per table, parents before children.

    At most `backfill_rows` earlier anonymous events of newly identified visitors are attached
    here; True if that bound was reached, and the follow-up task must attach the rest.
    """
    await _insert_and_update(conn, companies_t, plan.companies.values(), _company_row, plan.now)
    await _insert_and_update(conn, people_t, plan.people.values(), _person_row, plan.now)
    if plan.new_external_ids:
        await _INSERT_EXTERNAL_IDS.run(conn, plan.new_external_ids)
    for statement, rows in (
        (_INSERT_EMAILS, plan.new_emails),
        (_INSERT_PHONES, plan.new_phones),
    ):
        if rows:
            await statement.run(conn, rows)
    if plan.new_unverified_phones:
        await _INSERT_UNVERIFIED_PHONES.run(conn, plan.new_unverified_phones)
    if plan.visitor_rows:
        await _UPSERT_VISITORS.run(conn, list(plan.visitor_rows.values()))
    if plan.event_rows:
        inserted = (await _INSERT_EVENTS.run(conn, plan.event_rows)).all()
        if len(inserted) != len(plan.event_rows):
            # Only possible if locking was bypassed: abort, and the rerun sees the winner.
            raise DuplicateEventError(f"{len(plan.event_rows) - len(inserted)} events existed")
    backfill_left = False
    if plan.visitor_rows:
        # Earlier anonymous events of a visitor now known belong to that person.
        rows = list(plan.visitor_rows.values())
        attached = await conn.exec_driver_sql(
            BACKFILL,
            (
                [r["tenant_id"] for r in rows],
                [r["visitor_id"] for r in rows],
                [r["person_id"] for r in rows],
                backfill_rows,
            ),
        )
        backfill_left = attached.rowcount >= backfill_rows
    if plan.idem_rows:
        await _INSERT_IDEMPOTENCY_KEYS.run(conn, plan.idem_rows)
    if plan.dead_rows:
        await write_dead_letters(conn, plan.dead_rows)
    return backfill_left


async def write_dead_letters(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Store dead letters (`rules.dead_letter_row`); one failed again is failed afresh."""
    stmt = pg_insert(dead_letters_t)
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[dead_letters_t.c.event_id],
            set_={
                "reason": stmt.excluded.reason,
                "problem": stmt.excluded.problem,
                "envelope": stmt.excluded.envelope,
                "failed_at": stmt.excluded.failed_at,
                "replayed_at": None,
            },
        ),
        rows,
    )


def _person_row(p: PersonState, now: datetime) -> dict[str, Any]:
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
        "updated_at": now,
    }


def _company_row(c: CompanyState, now: datetime) -> dict[str, Any]:
    return {
        "id": c.id,
        "tenant_id": c.tenant_id,
        "name": c.name,
        "name_key": c.name_key,
        "website": c.website,
        "industry": c.industry,
        "company_size": c.company_size,
        "description": c.description,
        "created_at": now,
        "updated_at": now,
    }


async def _insert_and_update(
    conn: AsyncConnection,
    table: Table,
    states: Iterable[_State],
    to_row: Callable[[_State, datetime], dict[str, Any]],
    now: datetime,
) -> None:
    new, dirty = [], []
    for state in states:
        if state.new:
            new.append(to_row(state, now))
        elif state.dirty:
            dirty.append(to_row(state, now))
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


# The newest $4 anonymous events of the visitors, in all, attached to their person (a crawler's
# history must not hold a lead's transaction): one index range per visitor, newest first.
BACKFILL = """
UPDATE events SET person_id = todo.person_id
FROM (
    SELECT a.id, v.person_id
    FROM unnest($1::uuid[], $2::text[], $3::uuid[]) AS v(tenant_id, visitor_id, person_id)
    CROSS JOIN LATERAL (
        SELECT e.id FROM events e
        WHERE e.tenant_id = v.tenant_id AND e.visitor_id = v.visitor_id AND e.person_id IS NULL
        ORDER BY e.occurred_at DESC
        LIMIT $4
    ) AS a
    LIMIT $4
) AS todo
WHERE events.id = todo.id AND events.person_id IS NULL
"""


@dataclass(frozen=True)
class BulkInsert:
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


# The column lists below are checked against shared/db/tables.py by the tests.
_CONTACT_COLUMNS = {
    "tenant_id": "uuid",
    "value": "text",
    "person_id": "uuid",
    "type": "text",
    "is_primary": "bool",
    "created_at": "timestamptz",
}
_INSERT_EXTERNAL_IDS = BulkInsert(
    "person_external_ids",
    {"tenant_id": "uuid", "value": "text", "person_id": "uuid", "created_at": "timestamptz"},
)
_INSERT_EMAILS = BulkInsert("person_emails", _CONTACT_COLUMNS)
_INSERT_PHONES = BulkInsert("person_phones", _CONTACT_COLUMNS)
_INSERT_UNVERIFIED_PHONES = BulkInsert(
    "person_unverified_phones",
    {
        "person_id": "uuid",
        "value": "text",
        "tenant_id": "uuid",
        "type": "text",
        "created_at": "timestamptz",
    },
    "ON CONFLICT DO NOTHING",
)
# A visitor row is rewritten only when its person changes, not on every event that names it.
_UPSERT_VISITORS = BulkInsert(
    "visitors",
    {"tenant_id": "uuid", "visitor_id": "text", "person_id": "uuid", "updated_at": "timestamptz"},
    "ON CONFLICT (tenant_id, visitor_id) DO UPDATE"
    " SET person_id = excluded.person_id, updated_at = excluded.updated_at"
    " WHERE visitors.person_id IS DISTINCT FROM excluded.person_id",
)
_INSERT_EVENTS = BulkInsert(
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
        "bot": "bool",
        "client_occurred_at": "timestamptz",
        "sent_at": "timestamptz",
        "clock_adjustment": "text",
    },
    "ON CONFLICT DO NOTHING RETURNING id",
)
_INSERT_IDEMPOTENCY_KEYS = BulkInsert(
    "idempotency_keys",
    {"tenant_id": "uuid", "key": "text", "event_id": "uuid", "created_at": "timestamptz"},
)
