"""The bulk inserts' column lists against shared/db/tables.py, so a new column is not forgotten."""

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from sqlalchemy import Boolean, DateTime, Integer, String, Table, Text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.types import TypeEngine

from shared.db.tables import (
    companies_t,
    events_t,
    idempotency_keys_t,
    people_t,
    person_emails_t,
    person_external_ids_t,
    person_phones_t,
    person_unverified_phones_t,
    visitors_t,
)
from worker.matching.states import CompanyState, PersonState
from worker.matching.write import (
    _INSERT_EMAILS,
    _INSERT_EVENTS,
    _INSERT_EXTERNAL_IDS,
    _INSERT_IDEMPOTENCY_KEYS,
    _INSERT_PHONES,
    _INSERT_UNVERIFIED_PHONES,
    _UPSERT_VISITORS,
    BulkInsert,
    _company_row,
    _person_row,
)

# The json_to_recordset type each column type is read as (VARCHAR(n) is cast on insert).
_RECORD_TYPES: list[tuple[type[TypeEngine[object]], str]] = [
    (UUID, "uuid"),
    (JSONB, "jsonb"),
    (DateTime, "timestamptz"),
    (Boolean, "bool"),
    (Integer, "int"),
    (String, "text"),  # Text is a String
    (Text, "text"),
]


def _record_type(column_type: object) -> str:
    return next(name for kind, name in _RECORD_TYPES if isinstance(column_type, kind))


@pytest.mark.parametrize(
    ("spec", "table"),
    [
        (_INSERT_EXTERNAL_IDS, person_external_ids_t),
        (_INSERT_EMAILS, person_emails_t),
        (_INSERT_PHONES, person_phones_t),
        (_INSERT_UNVERIFIED_PHONES, person_unverified_phones_t),
        (_UPSERT_VISITORS, visitors_t),
        (_INSERT_EVENTS, events_t),
        (_INSERT_IDEMPOTENCY_KEYS, idempotency_keys_t),
    ],
)
def test_a_bulk_insert_writes_every_column_with_its_type(spec: BulkInsert, table: Table) -> None:
    assert spec.table == table.name
    assert spec.columns == {c.name: _record_type(c.type) for c in table.columns}


def test_the_events_insert_keeps_the_tables_column_order() -> None:
    assert list(_INSERT_EVENTS.columns) == list(events_t.columns.keys())


def test_person_and_company_rows_name_every_column() -> None:
    now = datetime.now(UTC)
    person = _person_row(PersonState(id=uuid4(), tenant_id=uuid4(), created_at=now), now)
    company = _company_row(CompanyState(id=uuid4(), tenant_id=uuid4(), name="A", name_key="a"), now)
    assert set(person) == set(people_t.columns.keys())
    assert set(company) == set(companies_t.columns.keys())
