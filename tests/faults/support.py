"""Workloads with known ids, the exact checks every fault test ends with, and the tools to
find a worker's processes and their PostgreSQL backends."""

import asyncio
import base64
import json
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psutil
import pytest
import redis
from sqlalchemy import func, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.contract.outcomes import StoredOutcome
from shared.contract.queues import Envelope
from shared.db.locks import email_lock, lock_key
from shared.db.tables import Company, DeadLetter, Event, Person, PersonEmail, PersonPhone
from shared.settings import Settings
from tests.support.messages import envelope, message, wait_outcomes
from tests.support.processes import WorkerProcess

# Settings for a worker whose lost messages must come back within a test: the app refuses a
# hard time limit that is not below the visibility timeout.
FAST_REDELIVERY = {
    "LEADSTREAM_VISIBILITY_TIMEOUT_SECONDS": "6",
    "LEADSTREAM_TASK_TIME_LIMIT_SECONDS": "5",
}


def email(i: int) -> str:
    return f"person{i}@faults.example.com"


def phone(i: int) -> str:
    """A distinct, valid US number per person: E.164 once the worker normalises it."""
    return f"+1 415 555 {1000 + i:04d}"


# Workloads -----------------------------------------------------------------------------------


@dataclass
class Workload:
    """Events with known ids in queue messages, and the rows they must leave behind."""

    tenant_id: uuid.UUID
    envelopes: list[Envelope]
    messages: list[tuple[str, bytes]]
    expected: dict[str, int]

    @property
    def ids(self) -> list[uuid.UUID]:
        return [e.id for e in self.envelopes]


def person_event(
    tenant_id: uuid.UUID, n: int, i: int, *, with_phone: bool, company: str | None, lead: bool
) -> Envelope:
    """Event `n` about person `i`, who is always known by e-mail (the metadata says which)."""
    person: dict[str, Any] = {"emails": [email(i)]}
    if with_phone:
        person["phones"] = [phone(i)]
    payload: dict[str, Any] = {
        "type": "form_submission" if lead else "page_view",
        "person": person,
        "metadata": {"n": n, "email": email(i)},
    }
    if company is not None:
        payload["company"] = {"name": company}
    return envelope(tenant_id, payload)


def burst(
    tenant_id: uuid.UUID,
    *,
    events: int,
    people: int,
    companies: int,
    per_message: int,
    seed: int = 7,
) -> Workload:
    """`events` events about `people` people (new and repeated ones, e-mails, phones and
    companies mixed), `per_message` to a queue message."""
    rng = random.Random(seed)
    envelopes, seen, phoned, firms = [], set(), set(), set()
    for n in range(events):
        i = rng.randrange(people)
        with_phone = n % 3 == 0
        company = f"Faults Co {i % companies}" if n % 2 == 0 else None
        envelopes.append(
            person_event(tenant_id, n, i, with_phone=with_phone, company=company, lead=n % 4 == 0)
        )
        seen.add(i)
        if with_phone:
            phoned.add(i)
        if company is not None:
            firms.add(company)
    messages = [pack(envelopes[k : k + per_message]) for k in range(0, len(envelopes), per_message)]
    expected = {
        "events": events,
        "people": len(seen),
        "emails": len(seen),
        "phones": len(phoned),
        "companies": len(firms),
        "dead_letters": 0,
    }
    return Workload(tenant_id, envelopes, messages, expected)


def pack(envelopes: list[Envelope]) -> tuple[str, bytes]:
    """One queue message (as the API writes it) and the queue it goes to."""
    body = message(envelopes)
    return json.loads(body)["properties"]["delivery_info"]["routing_key"], body


def email_lock_key(tenant_id: uuid.UUID, address: str) -> int:
    """The advisory lock a batch takes for an e-mail (holding it stops the batch midway)."""
    return lock_key(email_lock(tenant_id, address))


# Exact checks ----------------------------------------------------------------------------------


async def counts(engine: AsyncEngine, tenant_id: uuid.UUID) -> dict[str, int]:
    """Rows per table for one tenant."""
    result = {}
    async with engine.connect() as conn:
        for name, model in (
            ("events", Event),
            ("people", Person),
            ("emails", PersonEmail),
            ("phones", PersonPhone),
            ("companies", Company),
            ("dead_letters", DeadLetter),
        ):
            query = select(func.count()).select_from(model).where(model.tenant_id == tenant_id)
            result[name] = int((await conn.execute(query)).scalar_one())
    return result


async def assert_stored_exactly_once(engine: AsyncEngine, workload: Workload) -> dict[str, int]:
    """Every event of the workload stored once and nothing else; no person or company twice."""
    async with engine.connect() as conn:
        stored = list(
            (
                await conn.execute(select(Event.id).where(Event.tenant_id == workload.tenant_id))
            ).scalars()
        )
        missing = set(workload.ids) - set(stored)
        unexpected = set(stored) - set(workload.ids)
        assert not missing, f"{len(missing)} accepted events lost, e.g. {sorted(missing)[:3]}"
        assert not unexpected, f"{len(unexpected)} events stored that were never sent"
        assert len(stored) == len(set(stored)) == len(workload.ids)
        split = await people_split(conn, workload.tenant_id)
        assert not split, f"events of one e-mail point at several people: {split[:3]}"
    found = await counts(engine, workload.tenant_id)
    assert found == workload.expected
    return found


async def people_split(conn: AsyncConnection, tenant_id: uuid.UUID) -> list[Any]:
    """E-mails whose events do not all point at the one person who owns that e-mail."""
    rows = await conn.execute(
        text(
            "SELECT ev.metadata->>'email' AS email, count(DISTINCT ev.person_id) AS people,"
            " bool_and(ev.person_id = pe.person_id) AS owner"
            " FROM events ev LEFT JOIN person_emails pe"
            "  ON pe.tenant_id = ev.tenant_id AND pe.value = ev.metadata->>'email'"
            " WHERE ev.tenant_id = :t AND ev.metadata->>'email' IS NOT NULL"
            " GROUP BY 1"
        ),
        {"t": tenant_id},
    )
    return [tuple(r) for r in rows if r.people != 1 or not r.owner]


async def outcomes_of(
    broker: redis.Redis, engine: AsyncEngine, workload: Workload, timeout: float
) -> dict[uuid.UUID, StoredOutcome]:
    """Wait for every event's outcome and check that each one was processed (not failed)."""
    outcomes = await wait_outcomes(broker, engine, workload.ids, timeout=timeout)
    failed = {i: o for i, o in outcomes.items() if o.status != "processed"}
    assert not failed, f"{len(failed)} events failed, e.g. {next(iter(failed.values()))}"
    return outcomes


def _events_of(raw_message: dict[str, Any]) -> list[uuid.UUID]:
    args = json.loads(base64.b64decode(raw_message["body"]))[0]
    return [uuid.UUID(e["id"]) for e in args[0]]


def held_by_workers(broker: redis.Redis) -> set[uuid.UUID]:
    """Events in messages that a worker took and has not acknowledged (kombu's `unacked`)."""
    held: set[uuid.UUID] = set()
    for value in broker.hvals("unacked"):
        payload, _exchange, _routing_key = json.loads(value)
        held.update(_events_of(payload))
    return held


def still_queued(broker: redis.Redis) -> set[uuid.UUID]:
    """Events in messages waiting in the two queues."""
    return {
        event
        for queue in ("leads", "activity")
        for raw in broker.lrange(queue, 0, -1)
        for event in _events_of(json.loads(raw))
    }


def pending(broker: redis.Redis, ids: list[uuid.UUID]) -> int:
    """How many of these events still have no outcome (their marker says queued; the worker
    deletes it once the event is committed)."""
    raw = broker.mget([f"ls:event:{i}" for i in ids])
    return sum(1 for r in raw if r is not None and StoredOutcome.loads(r).status == "queued")


# Waiting -----------------------------------------------------------------------------------------


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll until `check` holds and return how long that took; fail after `timeout` s."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await check():
        if loop.time() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(interval)
    return loop.time() - started


# Processes and their database connections ------------------------------------------------------


def pool_children(worker: WorkerProcess) -> list[psutil.Process]:
    """The worker's prefork pool processes, the ones that run tasks."""
    try:
        return psutil.Process(worker.process.pid).children()
    except psutil.NoSuchProcess:
        return []


def database_port(settings: Settings) -> int:
    url = make_url(settings.database_url)
    if not url.host or url.host.startswith("/") or "host" in url.query:
        pytest.skip("telling one process's database connections from another's needs TCP")
    return url.port or 5432


def connections_by_port(processes: list[psutil.Process], db_port: int) -> dict[int, int]:
    """Local TCP port -> pid, for every connection these processes hold to PostgreSQL."""
    ports = {}
    for process in processes:
        try:
            connections = process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for conn in connections:
            if conn.raddr and conn.raddr.port == db_port:
                ports[conn.laddr.port] = process.pid
    return ports


async def blocked_backends(conn: AsyncConnection) -> dict[int, int]:
    """client port -> backend pid of this database's sessions waiting for an advisory lock."""
    rows = await conn.execute(
        text(
            "SELECT client_port, pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
        )
    )
    return {r.client_port: r.pid for r in rows}


async def backends_in_transaction(conn: AsyncConnection) -> set[int]:
    """Client ports of this database's sessions that are inside a transaction, working."""
    rows = await conn.execute(
        text(
            "SELECT client_port FROM pg_stat_activity WHERE datname = current_database()"
            " AND xact_start IS NOT NULL AND state <> 'idle'"
        )
    )
    return {r.client_port for r in rows}


async def deadlocks(engine: AsyncEngine) -> int:
    """The test database's deadlock counter (pg_stat_database)."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        query = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
        return int((await conn.execute(text(query))).scalar_one())


def log_records(*workers: WorkerProcess) -> list[dict[str, Any]]:
    """The workers' structured log records (Celery's own plain lines are skipped)."""
    records = []
    for worker in workers:
        for line in worker.log.read_text(errors="replace").splitlines():
            start = line.find("{")
            if start < 0:
                continue
            try:
                record = json.loads(line[start:])
            except ValueError:
                continue
            if isinstance(record, dict) and "event" in record:
                records.append(record)
    return records


def log_text(*workers: WorkerProcess) -> str:
    return "\n".join(w.log.read_text(errors="replace") for w in workers)
