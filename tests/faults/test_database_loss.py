"""PostgreSQL connections terminated under the worker, again and again, in the middle of a burst.

`pg_terminate_backend` is what a database restart, a failover or an idle-connection killer does
to a session: the transaction is rolled back and the connection is gone. The worker must treat
it as transient (retry the task later), never as a bad event (dead letter).
"""

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.settings import Settings
from tests.faults.conftest import Fleet
from tests.faults.support import (
    FAST_REDELIVERY,
    Workload,
    assert_stored_exactly_once,
    blocked_backends,
    burst,
    connections_by_port,
    counts,
    database_port,
    email_lock_key,
    eventually,
    log_records,
    outcomes_of,
    pending,
    pool_children,
)
from tests.support.messages import push
from tests.support.processes import WorkerProcess
from tests.support.tenants import Tenant

pytestmark = pytest.mark.faults


async def terminate_worker_sessions(
    engine: AsyncEngine, worker: WorkerProcess, db_port: int, *, only_blocked: bool = False
) -> int:
    """pg_terminate_backend every session the worker's pool processes hold on this database."""
    ports = list(connections_by_port(pool_children(worker), db_port))
    if not ports:
        return 0
    async with engine.connect() as conn:
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
    fleet: Fleet,
    fault_env: dict[str, str],
    broker: redis.Redis,
    engine: AsyncEngine,
    tenant: Tenant,
    settings: Settings,
    measure: Callable[..., None],
) -> None:
    db_port = database_port(settings)
    worker = fleet.worker(fault_env, name="db-loss")
    work: Workload = burst(tenant.id, events=500, people=80, companies=8, per_message=10, seed=3)
    waves = [work.messages[k : k + 10] for k in range(0, len(work.messages), 10)]
    held = work.envelopes[0].payload["metadata"]["email"]
    lock = email_lock_key(tenant.id, held)

    # 1. A batch stopped inside its transaction (on a lock the test holds) loses its session.
    terminated = 0
    async with engine.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock})
        await holder.commit()
        push(broker, *waves[0], markers=work.envelopes)

        async def stopped() -> bool:
            async with engine.connect() as conn:
                blocked = await blocked_backends(conn)
            return any(p in blocked for p in connections_by_port(pool_children(worker), db_port))

        await eventually(stopped, timeout=20, what="a batch waiting on the held lock")
        terminated += await terminate_worker_sessions(engine, worker, db_port, only_blocked=True)
        await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock})
        await holder.commit()

    # 2. Then every session of the worker, every 150 ms, while the rest arrives in waves.
    rounds = 0
    for wave in waves[1:]:
        push(broker, *wave)
        for _ in range(2):
            await asyncio.sleep(0.075)  # the pace of the injection, not a wait for work
            terminated += await terminate_worker_sessions(engine, worker, db_port)
            rounds += 1
    while pending(broker, work.ids) and rounds < 24:
        await asyncio.sleep(0.15)
        terminated += await terminate_worker_sessions(engine, worker, db_port)
        rounds += 1
    last_fault = time.monotonic()

    # Retries back off with jitter (up to 2**retries s): allow for a few in a row.
    await outcomes_of(broker, work, timeout=90)
    recovery = time.monotonic() - last_fault
    found = await assert_stored_exactly_once(engine, work)
    assert found["dead_letters"] == 0, "an event was dead-lettered for a transient error"

    records = log_records(worker)
    kinds = Counter(r["event"] for r in records)
    retries = [r for r in records if r["event"] == "task.retry"]
    assert retries, "no task saw the database go away: the fault was not injected"
    assert not kinds["event.rejected"] and not kinds["event.poison"], kinds
    measure(
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
    fleet: Fleet,
    fault_env: dict[str, str],
    broker: redis.Redis,
    engine: AsyncEngine,
    tenant: Tenant,
    settings: Settings,
    measure: Callable[..., None],
) -> None:
    """One batch whose session is terminated every time it runs: its retries back off longer
    and longer. Time limits are short here (4 s soft, 5 s hard, which the app accepts); with
    the defaults (60 s / 90 s, backoff capped at 60 s) the same holds after a longer outage."""
    db_port = database_port(settings)
    worker = fleet.worker({**fault_env, **FAST_REDELIVERY}, concurrency=1, name="db-again")
    work = burst(tenant.id, events=10, people=10, companies=2, per_message=10, seed=6)
    lock = email_lock_key(tenant.id, work.envelopes[0].payload["metadata"]["email"])
    terminated = 0
    async with engine.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock})
        await holder.commit()
        push(broker, *work.messages, markers=work.envelopes)
        deadline = time.monotonic() + 45
        while terminated < 8 and time.monotonic() < deadline:
            terminated += await terminate_worker_sessions(
                engine, worker, db_port, only_blocked=True
            )
            if "Soft time limit" in worker.log.read_text(errors="replace"):
                break
            await asyncio.sleep(0.05)  # a polling interval, not a wait for work
        await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock})
        await holder.commit()
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
    found = await counts(engine, tenant.id)
    measure(
        accepted=len(work.ids),
        stored=found["events"],
        dead_letters=found["dead_letters"],
        sessions_terminated=terminated,
        retries=[(r["retries"], r.get("delay")) for r in retries],
        soft_time_limit_hit="Soft time limit" in log,
        task_failed_and_acked="raised unexpected" in log,
        messages_left_in_redis=broker.llen("leads")
        + broker.llen("activity")
        + broker.hlen("unacked"),
        settled_after_release_s=round(time.monotonic() - released, 2),
    )
    assert found["dead_letters"] == 0, "an event was dead-lettered for a transient error"
    accepted, stored = len(work.ids), found["events"]
    assert stored == accepted, (
        f"{accepted - stored} accepted events lost: the retry's backoff sleep ran "
        "into the soft time limit, the task failed and its message was acknowledged"
    )
