"""PostgreSQL connections terminated under the worker, again and again, in the middle of a burst.

`pg_terminate_backend` is what a database restart, a failover or an idle-connection killer does
to a session: the transaction is rolled back and the connection is gone. The worker must treat
it as transient (retry the task later), never as a bad event (dead letter).
"""

import asyncio
import time
from collections import Counter

import pytest
from sqlalchemy import text

from tests.faults.stack import FaultStack
from tests.faults.support import (
    blocked_backends,
    connections_by_port,
    counts,
    eventually,
    log_records,
    pending,
    pool_children,
)
from tests.support.messages import push
from tests.support.processes import WorkerProcess

pytestmark = pytest.mark.faults


async def terminate_worker_sessions(
    faults: FaultStack, worker: WorkerProcess, *, only_blocked: bool = False
) -> int:
    """pg_terminate_backend every session the worker's pool processes hold on this database."""
    ports = list(connections_by_port(pool_children(worker), faults.db_port))
    if not ports:
        return 0
    async with faults.engine.connect() as conn:
        if only_blocked:
            blocked = await blocked_backends(conn)
            ports = [p for p in ports if p in blocked]
        rows = await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND client_port = ANY(:ports)"
            ),
            {"ports": ports},
        )
        return sum(1 for (done,) in rows if done)


async def test_database_connections_terminated_mid_burst_are_retried_not_dead_lettered(
    faults: FaultStack,
) -> None:
    worker = faults.worker(name="db-loss")
    work = faults.burst(events=500, people=80, companies=8, per_message=10, seed=3)
    waves = [work.messages[k : k + 10] for k in range(0, len(work.messages), 10)]

    # 1. A batch stopped inside its transaction (on a lock the test holds) loses its session.
    terminated = 0
    async with faults.first_email_locked(work):
        faults.push(work, waves[0])
        await faults.batch_stopped_midway(worker)
        terminated += await terminate_worker_sessions(faults, worker, only_blocked=True)

    # 2. Then every session of the worker, every 150 ms, while the rest arrives in waves.
    rounds = 0
    for wave in waves[1:]:
        push(faults.broker, *wave)
        for _ in range(2):
            await asyncio.sleep(0.075)  # the pace of the injection, not a wait for work
            terminated += await terminate_worker_sessions(faults, worker)
            rounds += 1
    while pending(faults.broker, work.ids) and rounds < 24:
        await asyncio.sleep(0.15)
        terminated += await terminate_worker_sessions(faults, worker)
        rounds += 1
    last_fault = time.monotonic()

    # Retries back off with jitter (up to 2**retries s): allow for a few in a row.
    await faults.outcomes(work, timeout=90)
    recovery = time.monotonic() - last_fault
    found = await faults.stored_exactly_once(work)
    assert found["dead_letters"] == 0, "an event was dead-lettered for a transient error"

    records = log_records(worker)
    kinds = Counter(r["event"] for r in records)
    retries = [r for r in records if r["event"] == "task.retry"]
    assert retries, "no task saw the database go away: the fault was not injected"
    assert not kinds["event.rejected"] and not kinds["event.poison"], kinds
    faults.measure(
        accepted=len(work.ids),
        stored=found["events"],
        duplicates=found["events"] - len(work.ids),
        rows=found,
        sessions_terminated=terminated,
        termination_rounds=rounds,
        task_retries=len(retries),
        max_retries_of_one_task=max(r["retries"] for r in retries) + 1,
        retry_errors=Counter(r["error"][:70] for r in retries).most_common(4),
        replayed_events=sum(
            r.get("replayed", 0) for r in records if r["event"] == "batch.processed"
        ),
        recovery_after_last_fault_s=round(recovery, 2),
    )


async def test_a_batch_that_loses_its_connection_again_and_again_is_not_dropped(
    faults: FaultStack,
) -> None:
    """One batch whose session is terminated every time it runs: its retries back off longer
    and longer, each sleep capped at a quarter of the task's hard time limit (5 s here, below
    the 6 s visibility timeout as the app demands); with the defaults (90 s, backoff capped at
    20 s) the same holds after a longer outage. There is no soft time limit to cut a backoff."""
    worker = faults.worker(name="db-again", concurrency=1, fast_redelivery=True)
    work = faults.burst(events=10, people=10, companies=2, per_message=10, seed=6)
    broker = faults.broker
    terminated = 0
    async with faults.first_email_locked(work):
        faults.push(work)
        deadline = time.monotonic() + 45
        while terminated < 8 and time.monotonic() < deadline:
            terminated += await terminate_worker_sessions(faults, worker, only_blocked=True)
            await asyncio.sleep(0.05)  # a polling interval, not a wait for work
    released = time.monotonic()

    async def settled() -> bool:
        # Stored (every outcome published), or given up: no copy of the message left anywhere
        # (a retry is published before the message it replaces is acknowledged).
        left = broker.llen("leads") + broker.llen("activity") + broker.hlen("unacked")
        return not pending(broker, work.ids) or left == 0

    await eventually(settled, timeout=30, what="the batch was stored or given up")
    records = log_records(worker)
    retries = [r for r in records if r["event"] == "task.retry"]
    log = worker.log.read_text(errors="replace")
    found = await counts(faults.engine, faults.tenant.id)
    faults.measure(
        accepted=len(work.ids),
        stored=found["events"],
        dead_letters=found["dead_letters"],
        sessions_terminated=terminated,
        retries=[(r["retries"], r.get("delay")) for r in retries],
        hard_time_limit_hit="Hard time limit" in log,
        task_failed_and_acked="raised unexpected" in log,
        messages_left_in_redis=broker.llen("leads")
        + broker.llen("activity")
        + broker.hlen("unacked"),
        settled_after_release_s=round(time.monotonic() - released, 2),
    )
    assert found["dead_letters"] == 0, "an event was dead-lettered for a transient error"
    accepted, stored = len(work.ids), found["events"]
    assert stored == accepted, (
        f"{accepted - stored} accepted events lost: the task failed and its message was "
        "acknowledged instead of retried"
    )
