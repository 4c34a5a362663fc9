"""A deadlock-prone mix: batches that touch the same people in opposite orders, at once.

Batch A_k reaches persons p0..p19 by e-mail, in that order; batch B_k reaches the same people
by phone, in reverse. Some A events also name the next person's phone (one event, two people),
and A_k and B_k both create the same new people, by e-mail in A and by e-mail + phone in B.
Every event adds a tag and moves its person to another company, so each batch updates the
same rows the other one does. Four pool processes (two workers) run all pairs together.
"""

import time
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from shared.contract.queues import Envelope
from tests.faults.stack import FaultStack
from tests.faults.support import (
    Workload,
    deadlocks,
    email,
    log_records,
    log_text,
    pack,
    person_event,
    phone,
)
from tests.support.messages import envelope, push

pytestmark = pytest.mark.faults

PEOPLE = 20
PAIRS = 12
NEW_PER_PAIR = 3


def new_email(k: int, j: int) -> str:
    return f"new-{k}-{j}@faults.example.com"


def new_phone(k: int, j: int) -> str:
    return f"+1 212 555 {1000 + 10 * k + j:04d}"


def event(tenant_id: uuid.UUID, n: int, person: dict[str, Any], owner: str, firm: int) -> Envelope:
    """Event `n` about the person who owns e-mail `owner`, reached by what `person` names."""
    return envelope(
        tenant_id,
        {
            "type": "page_view",
            "person": person,
            "company": {"name": f"Mix {firm}"},
            "metadata": {"n": n, "email": owner},
        },
    )


def opposite_batches(tenant_id: uuid.UUID) -> tuple[list[Envelope], list[tuple[str, bytes]]]:
    envelopes, messages, n = [], [], 1000
    for k in range(PAIRS):
        a, b = [], []
        for i in range(PEOPLE):
            person: dict[str, Any] = {"emails": [email(i)], "tags": [f"a{k}"]}
            if i % 5 == 0:  # names the next person too: a conflict, never a merge
                person["phones"] = [phone((i + 1) % PEOPLE)]
            a.append(event(tenant_id, n, person, email(i), i % 3))
            n += 1
        for j in range(NEW_PER_PAIR):
            a.append(event(tenant_id, n, {"emails": [new_email(k, j)]}, new_email(k, j), j))
            n += 1
        for i in reversed(range(PEOPLE)):
            person = {"phones": [phone(i)], "tags": [f"b{k}"]}
            b.append(event(tenant_id, n, person, email(i), (i + 1) % 3))
            n += 1
        for j in reversed(range(NEW_PER_PAIR)):
            person = {"emails": [new_email(k, j)], "phones": [new_phone(k, j)]}
            b.append(event(tenant_id, n, person, new_email(k, j), (j + 1) % 3))
            n += 1
        envelopes += a + b
        messages += [pack(a), pack(b)]  # A_k and B_k side by side in the queue
    return envelopes, messages


async def test_batches_touching_the_same_people_in_opposite_orders_all_commit(
    faults: FaultStack,
) -> None:
    engine, tenant = faults.engine, faults.tenant
    workers = [faults.worker(name=f"mix-{k}", concurrency=2) for k in range(2)]
    seed = [
        person_event(tenant.id, i, i, with_phone=True, company=None, lead=False)
        for i in range(PEOPLE)
    ]
    seeded = Workload(tenant.id, seed, [pack(seed)], {})
    faults.push(seeded)
    await faults.outcomes(seeded, timeout=30)
    deadlocks_before = await deadlocks(engine)

    mixed, messages = opposite_batches(tenant.id)
    started = time.monotonic()
    push(faults.broker, *messages, markers=mixed)
    work = Workload(
        tenant.id,
        seed + mixed,
        messages,
        {
            "events": len(seed) + len(mixed),
            "people": PEOPLE + PAIRS * NEW_PER_PAIR,
            "emails": PEOPLE + PAIRS * NEW_PER_PAIR,
            "phones": PEOPLE + PAIRS * NEW_PER_PAIR,
            "companies": 3,
            "dead_letters": 0,
        },
    )
    await faults.outcomes(work, timeout=90)
    elapsed = time.monotonic() - started
    found = await faults.stored_exactly_once(work)

    # No update lost: every person carries the tag of every batch that reached it.
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT pe.value, p.tags FROM people p JOIN person_emails pe ON pe.person_id = p.id"
                " WHERE p.tenant_id = :t AND pe.value LIKE 'person%'"
            ),
            {"t": tenant.id},
        )
        tags = {value: set(t) for value, t in rows}
    every = {f"a{k}" for k in range(PAIRS)} | {f"b{k}" for k in range(PAIRS)}
    assert tags == {email(i): every for i in range(PEOPLE)}

    # Stopping the workers ends their sessions, which flushes their statistics.
    faults.fleet.stop_all()
    deadlocks_after = await deadlocks(engine)
    logs = log_text(*workers)
    records = log_records(*workers)
    assert deadlocks_after == deadlocks_before, "PostgreSQL detected a deadlock"
    assert "deadlock" not in logs.lower()
    assert not any(r["event"] in {"task.retry", "event.rejected"} for r in records)
    faults.measure(
        accepted=len(work.ids),
        stored=found["events"],
        duplicates=found["events"] - len(work.ids),
        rows=found,
        batches_in_opposite_order=len(messages),
        deadlocks_detected=deadlocks_after - deadlocks_before,
        contention_retries=sum(r["event"] == "batch.contention_retry" for r in records),
        all_committed_in_s=round(elapsed, 2),
    )
