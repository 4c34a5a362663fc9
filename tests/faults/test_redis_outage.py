"""Redis (broker and outcome store) unavailable under a running API and worker.

Down (killed: connections refused) and hung (SIGSTOP: connections open, no answer). The API
must answer 503 with Retry-After at once or within its enqueue timeout, never hang, never say
202 for an event the broker did not take; when Redis is back, ingestion resumes without
restarting any process.
"""

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contract.outcomes import idempotency_key, parse_idempotency_record
from tests.faults.stack import FaultStack, RedisServer
from tests.faults.support import (
    counts,
    email,
    eventually,
    held_by_workers,
    people_split,
    still_queued,
)

pytestmark = pytest.mark.faults

ENQUEUE_TIMEOUT = 1.0  # the app's default LEADSTREAM_ENQUEUE_TIMEOUT_SECONDS
OUTAGE = 3.0  # seconds Redis stays down once the worker has noticed: a restart or failover


@dataclass
class Answer:
    n: int
    status: int
    seconds: float
    event_id: uuid.UUID | None
    retry_after: str | None
    replayed: bool


class Caller:
    """A partner posting numbered events; every answer is kept."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.answers: list[Answer] = []
        self.next = 0

    async def post(self, *, key: str | None = None, n: int | None = None) -> Answer:
        if n is None:
            n, self.next = self.next, self.next + 1
        payload: dict[str, Any] = {
            "type": "page_view",
            "person": {"emails": [email(n % 25)]},
            "metadata": {"n": n, "email": email(n % 25)},
        }
        headers = {"Idempotency-Key": key} if key else {}
        started = time.monotonic()
        response = await self.http.post("/api/partner/events", json=payload, headers=headers)
        answer = Answer(
            n=n,
            status=response.status_code,
            seconds=time.monotonic() - started,
            event_id=uuid.UUID(response.json()["id"]) if response.status_code == 202 else None,
            retry_after=response.headers.get("retry-after"),
            replayed=response.headers.get("idempotent-replayed") == "true",
        )
        self.answers.append(answer)
        return answer

    async def burst(self, size: int, **kwargs: Any) -> list[Answer]:
        return list(await asyncio.gather(*(self.post(**kwargs) for _ in range(size))))

    def accepted(self) -> dict[uuid.UUID, int]:
        """Event id -> request number, for every 202."""
        return {a.event_id: a.n for a in self.answers if a.event_id is not None}


async def stored_by_request(engine: AsyncEngine, tenant_id: uuid.UUID) -> dict[uuid.UUID, int]:
    """Stored event id -> the request number it came from."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id, (metadata->>'n')::int FROM events WHERE tenant_id = :t"),
            {"t": tenant_id},
        )
        return {row[0]: row[1] for row in rows}


def assert_refused_quickly(answers: list[Answer], limit: float) -> None:
    assert {a.status for a in answers} == {503}, [a.status for a in answers]
    assert all(a.retry_after == "1" for a in answers), "every 503 says when to retry"
    slowest = max(a.seconds for a in answers)
    assert slowest < limit, f"a 503 took {slowest:.2f}s"


async def test_redis_down_answers_503_at_once_and_ingestion_resumes_without_restarts(
    faults: FaultStack,
) -> None:
    async with faults.api_client() as http:
        worker = faults.worker(name="redis-down")
        caller = Caller(http)
        before = await caller.burst(40)
        assert {a.status for a in before} == {202}

        faults.redis_server.kill()
        down = await caller.burst(30)
        down += [await caller.post() for _ in range(10)]  # one by one, too
        assert_refused_quickly(down, limit=ENQUEUE_TIMEOUT)

        faults.redis_server.start()  # same port, same append-only file
        back_at = time.monotonic()
        refused_after_return = 0

        async def accepting() -> bool:
            nonlocal refused_after_return
            answer = await caller.post()
            refused_after_return += answer.status == 503
            return answer.status == 202

        to_first_202 = await eventually(accepting, timeout=10, what="a 202 after Redis returned")
        after = await caller.burst(40)
        assert {a.status for a in after} == {202}, "ingestion resumed for good"

        accepted = caller.accepted()

        async def all_stored() -> bool:
            return set(accepted) <= set(await stored_by_request(faults.engine, faults.tenant.id))

        to_all_stored = await eventually(
            all_stored, timeout=60, what="the worker stored every accepted event"
        )

    stored = await stored_by_request(faults.engine, faults.tenant.id)
    assert set(stored) == set(accepted), "exactly the accepted events, none refused, none lost"
    assert sorted(stored.values()) == sorted(accepted.values())
    found = await counts(faults.engine, faults.tenant.id)
    assert found["events"] == len(accepted) and found["dead_letters"] == 0
    assert found["people"] == found["emails"] == 25
    assert worker.process.poll() is None, "the worker lived through the outage"
    faults.measure(
        accepted=len(accepted),
        refused=sum(a.status == 503 for a in caller.answers),
        stored=found["events"],
        duplicates=found["events"] - len(set(stored)),
        slowest_503_s=round(max(a.seconds for a in down), 3),
        median_503_s=round(sorted(a.seconds for a in down)[len(down) // 2], 3),
        refused_after_redis_returned=refused_after_return,
        first_202_after_return_s=round(to_first_202, 2),
        all_stored_after_return_s=round(time.monotonic() - back_at, 2),
        all_stored_wait_s=round(to_all_stored, 2),
    )


async def during_hang(server: RedisServer, *requests: Awaitable[Answer]) -> list[Answer]:
    """Send the requests at once while Redis is stopped (SIGSTOP); resume it when answered."""
    server.pause()
    try:
        return list(await asyncio.gather(*requests))
    finally:
        server.resume()


async def answering(broker: redis.Redis) -> None:
    async def pong() -> bool:
        try:
            return bool(broker.ping())
        except redis.RedisError:
            return False

    await eventually(pong, timeout=5, what="Redis answers again")


async def settled(broker: redis.Redis, ids: Iterable[uuid.UUID]) -> float:
    """Wait until no event is left queued: each has an outcome or was never queued at all."""
    keys = [f"ls:event:{i}" for i in ids]

    async def done() -> bool:
        return not any(r is not None and b'"queued"' in r for r in broker.mget(keys))

    return await eventually(done, timeout=30, what="every queued event has an outcome")


async def test_redis_hung_answers_503_within_the_timeout_and_ingestion_resumes(
    faults: FaultStack,
) -> None:
    async with faults.api_client() as http:
        worker = faults.worker(name="redis-hung")
        caller = Caller(http)
        assert {a.status for a in await caller.burst(20)} == {202}
        hung = await during_hang(faults.redis_server, *(caller.post() for _ in range(20)))
        # The write to a Redis that does not answer is given up after the enqueue timeout.
        assert_refused_quickly(hung, limit=ENQUEUE_TIMEOUT + 0.5)
        await answering(faults.broker)
        resumed_at = time.monotonic()
        after = await caller.burst(20)
        assert {a.status for a in after} == {202}, "ingestion resumed without any restart"
        accepted = caller.accepted()
        await settled(faults.broker, accepted)
        recovery = time.monotonic() - resumed_at

    stored = await stored_by_request(faults.engine, faults.tenant.id)
    assert set(accepted) <= set(stored), "every event answered 202 is stored"
    refused = {a.n for a in hung}
    surplus = [n for i, n in stored.items() if i not in accepted]
    assert set(surplus) <= refused, "nothing is stored that no request sent"
    assert len(surplus) == len(set(surplus)), "and nothing twice"
    found = await counts(faults.engine, faults.tenant.id)
    assert found["events"] == len(accepted) + len(surplus) and found["dead_letters"] == 0
    assert worker.process.poll() is None
    faults.measure(
        accepted=len(accepted),
        refused=len(hung),
        stored=found["events"],
        duplicates=found["events"] - len(set(stored)),
        fastest_503_s=round(min(a.seconds for a in hung), 3),
        slowest_503_s=round(max(a.seconds for a in hung), 3),
        # The write reached Redis' socket before the API gave up: it ran when Redis resumed.
        refused_but_stored_anyway=len(surplus),
        all_stored_after_resume_s=round(recovery, 2),
    )


async def test_an_event_refused_while_redis_hung_is_not_stored_twice_when_retried(
    faults: FaultStack,
) -> None:
    """503 says "not queued, retry after 1 s": a partner that does so must get one event."""
    async with faults.api_client() as http:
        faults.worker(name="redis-hung-retry")
        caller = Caller(http)
        assert {a.status for a in await caller.burst(20)} == {202}
        hung = await during_hang(faults.redis_server, *(caller.post(n=1000 + n) for n in range(10)))
        assert {a.status for a in hung} == {503}
        await answering(faults.broker)
        retried = [await caller.post(n=a.n) for a in hung]  # as the 503 asked
        assert {a.status for a in retried} == {202}
        await settled(faults.broker, caller.accepted())
        stored = await stored_by_request(faults.engine, faults.tenant.id)

    copies = Counter(n for n in stored.values() if n >= 1000)
    faults.measure(
        refused=len(hung),
        retried_and_accepted=len(retried),
        stored_once=sum(c == 1 for c in copies.values()),
        stored_twice=sum(c == 2 for c in copies.values()),
    )
    doubled = sorted(n for n, c in copies.items() if c > 1)
    assert not doubled, (
        f"{len(doubled)} of {len(hung)} events refused with 503 were queued anyway when Redis "
        "resumed, so the retry the 503 asked for stored them twice"
    )
    assert sorted(copies) == [a.n for a in hung]


async def test_an_idempotency_key_refused_while_redis_hung_is_not_lost_when_retried(
    faults: FaultStack,
) -> None:
    async with faults.api_client() as http:
        faults.worker(name="redis-hung-keys")
        caller = Caller(http)
        # Concurrent keyed requests leave the API's Redis pool with idle connections, as any
        # real load does: a request made during the hang then writes to Redis at once.
        warm = [caller.post(key=f"warm-{n}", n=2000 + n) for n in range(20)]
        assert {a.status for a in await asyncio.gather(*warm)} == {202}
        keys = [f"hung-{n}" for n in range(10)]
        hung = await during_hang(
            faults.redis_server, *(caller.post(key=k, n=1000 + n) for n, k in enumerate(keys))
        )
        assert_refused_quickly(hung, limit=ENQUEUE_TIMEOUT + 0.5)
        await answering(faults.broker)
        # A well-behaved partner retries each refused event with its Idempotency-Key.
        retried = [await caller.post(key=k, n=1000 + n) for n, k in enumerate(keys)]
        assert {a.status for a in retried} == {202}
        accepted = caller.accepted()
        await settled(faults.broker, accepted)

        stored = await stored_by_request(faults.engine, faults.tenant.id)
        # Settled: a committed event's marker is gone, so the database says what was queued.
        never_queued = set(accepted) - set(stored)
        # Where such an id comes from: the key, claimed by the request that was refused.
        claims = faults.broker.mget([idempotency_key(faults.tenant.id, k) for k in keys])
        claimed = [parse_idempotency_record(c)[0] for c in claims if isinstance(c, bytes)]
        stale = len([i for i in claimed if i in never_queued])
        reads = {(await http.get(f"/api/partner/events/{i}")).status_code for i in never_queued}
        faults.measure(
            accepted=len(accepted),
            stored=len(stored),
            retries_answered_as_replays=sum(a.replayed for a in retried),
            accepted_but_never_queued=len(never_queued),
            keys_pointing_at_never_queued_events=stale,
            get_of_those_events_answers=sorted(reads),
        )

    lost = set(accepted) - set(stored)
    assert not lost, (
        f"{len(lost)} events answered 202 (Idempotent-Replayed) were never queued nor stored"
    )
    per_key = sorted(n for n in stored.values() if 1000 <= n < 2000)
    assert per_key == list(range(1000, 1010)), "each retried key stored exactly once"


async def test_redis_restarted_under_load_the_worker_resumes_without_a_restart(
    faults: FaultStack,
) -> None:
    """Redis restarts while the worker holds messages (mid-batch), with the app's settings.

    Everything still queued must be taken up by the same worker process once Redis is back.
    What the worker had taken comes back when Celery restores it on closing the lost
    connection, if Redis answers by then; otherwise it waits in kombu's `unacked` hash for the
    visibility timeout (300 s here, see test_worker_kill), so it is not waited for: but it must
    be there, every accepted event is in a queue, in `unacked` or stored.
    """
    worker = faults.worker(name="redis-restart-under-load")
    work = faults.burst(events=600, people=80, companies=6, per_message=10, seed=5)
    faults.push(work)
    stored_ids: set[uuid.UUID] = set()

    async def stored() -> int:
        stored_ids.clear()
        stored_ids.update(await stored_by_request(faults.engine, faults.tenant.id))
        return len(stored_ids)

    async def under_way() -> bool:
        return await stored() >= 100

    await eventually(under_way, timeout=30, what="the burst under way")
    faults.redis_server.kill()
    at_kill = await stored()

    async def noticed() -> bool:
        return "Connection to broker lost" in worker.log.read_text(errors="replace")

    await eventually(noticed, timeout=15, what="the worker noticed the broker was gone")
    noticed_at = time.monotonic()

    async def outage_over() -> bool:
        return time.monotonic() - noticed_at > OUTAGE

    await eventually(outage_over, timeout=OUTAGE + 1, what="the outage lasted")
    faults.redis_server.start()
    back_at = time.monotonic()
    held = held_by_workers(faults.broker)  # before the worker is back: what it had taken
    at_return = still_queued(faults.broker)
    expected = at_return  # what Redis still had must be taken up by the same worker

    async def resumed() -> bool:
        await stored()
        return (
            expected <= stored_ids
            and faults.broker.llen("leads") + faults.broker.llen("activity") == 0
        )

    try:
        await eventually(resumed, timeout=20, what="the worker took up the queue again")
    finally:
        log = worker.log.read_text(errors="replace")
        stored_now = await stored()
        lost = set(work.ids) - stored_ids - at_return - held
        faults.measure(
            accepted=len(work.ids),
            stored_when_redis_died=at_kill,
            held_by_the_worker_when_redis_died=len(held),
            stored_now=stored_now,
            seconds_since_return=round(time.monotonic() - back_at, 1),
            worker_process_alive=worker.process.poll() is None,
            unrecoverable_error_logged="Unrecoverable error" in log,
            still_queued_messages=faults.broker.llen("leads") + faults.broker.llen("activity"),
            held_events_back_already=len(held & stored_ids),
            lost_before_unacked=len(lost),
        )
    assert not stored_ids - set(work.ids), "nothing stored that was not sent"
    async with faults.engine.connect() as conn:
        assert not await people_split(conn, faults.tenant.id), "no person duplicated"
    assert worker.process.poll() is None
    # A message is taken from its queue and recorded in `unacked` in one atomic call
    # (worker/broker.py): whatever the worker had taken when Redis died is still there.
    assert not lost, f"{len(lost)} events were in neither the queues nor `unacked`"
