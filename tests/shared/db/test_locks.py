"""Lock names are hashed into advisory-lock keys: their spelling is a contract between versions.

A worker and a dead-letter replay of different versions must take the same key for the same
identity, so these strings and keys are written out literally, not computed.
"""

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from shared.db.locks import (
    company_id_lock,
    company_key_lock,
    email_lock,
    event_lock,
    external_id_lock,
    idempotency_lock,
    lock_key,
    person_id_lock,
    phone_lock,
    visitor_lock,
)

TENANT = uuid.UUID("00000000-0000-4000-8000-000000000001")
ROW = uuid.UUID("00000000-0000-4000-8000-0000000000aa")


@pytest.mark.parametrize(
    ("builder", "args", "name", "key"),
    [
        (
            email_lock,
            (TENANT, "ann@example.com"),
            "00000000-0000-4000-8000-000000000001|e|ann@example.com",
            -4741481499298514381,
        ),
        (
            phone_lock,
            (TENANT, "+15035550199"),
            "00000000-0000-4000-8000-000000000001|p|+15035550199",
            -188995619921190316,
        ),
        (
            external_id_lock,
            (TENANT, "User-42"),
            "00000000-0000-4000-8000-000000000001|x|User-42",
            3306444740619346173,
        ),
        (
            person_id_lock,
            (TENANT, ROW),
            "00000000-0000-4000-8000-000000000001|pi|00000000-0000-4000-8000-0000000000aa",
            -213840596445136677,
        ),
        (
            visitor_lock,
            (TENANT, "vis-1"),
            "00000000-0000-4000-8000-000000000001|v|vis-1",
            366644170992800854,
        ),
        (
            company_key_lock,
            (TENANT, "acme"),
            "00000000-0000-4000-8000-000000000001|c|acme",
            6966409699008958728,
        ),
        (
            company_id_lock,
            (TENANT, ROW),
            "00000000-0000-4000-8000-000000000001|ci|00000000-0000-4000-8000-0000000000aa",
            -8805593492287568938,
        ),
        (
            idempotency_lock,
            (TENANT, "key-1"),
            "00000000-0000-4000-8000-000000000001|k|key-1",
            -6177368700964826385,
        ),
        (
            event_lock,
            (ROW,),
            "ev|00000000-0000-4000-8000-0000000000aa",
            -1947239382611116334,
        ),
    ],
)
def test_lock_names_and_keys_are_unchanged(
    builder: Callable[..., str], args: tuple[Any, ...], name: str, key: int
) -> None:
    assert builder(*args) == name
    assert lock_key(name) == key
