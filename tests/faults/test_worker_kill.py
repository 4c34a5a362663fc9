"""`kill -9` of worker processes in the middle of a batch.

What kombu's Redis transport and Celery really do (verified here and by hand, kombu 5.7):

* A pool process killed with -9: the main process sees WorkerLostError and, because the task
  is `acks_late` + `reject_on_worker_lost`, rejects the message with requeue, which pushes it
  straight back onto its queue (`QoS.reject` -> `restore_by_tag`). It is redelivered within
  about a second; the visibility timeout plays no part.
* The main process killed with -9: its pool processes die with it (Celery sets PDEATHSIG), and
  the messages it had taken (up to concurrency x prefetch multiplier) stay in the `unacked`
  hash: nothing is lost, but nothing brings them back until they are older than the visibility
  timeout AND some worker runs `restore_visible`. A worker runs that once when it starts and
  then only every `unacked_restore_interval` x `unacked_restore_throttle` = 10 x 10 s = ~100 s.
  So a worker restarted at once does NOT recover them: they wait up to the visibility timeout
  plus ~100 s (measured by hand: 102 s with a 8 s visibility timeout; with the app's 300 s,
  300 to 400 s). A worker started after the visibility timeout has passed restores them as it
  starts. The test shows both.
"""

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import Callable

import psutil
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
    backends_in_transaction,
    blocked_backends,
    burst,
    connections_by_port,
    database_port,
    email_lock_key,
    eventually,
    held_by_workers,
    outcomes_of,
    pending,
    pool_children,
)
from tests.support.messages import push
from tests.support.processes import WorkerProcess
from tests.support.tenants import Tenant

pytestmark = pytest.mark.faults

_RECEIVED = re.compile(r"Task leadstream\.process_events\[([0-9a-f-]+)\] received")


def deliveries(*workers: WorkerProcess) -> Counter[str]:
    """How many times each task id was handed to a worker (Celery logs every receipt)."""
    found: Counter[str] = Counter()
    for worker in workers:
        found.update(_RECEIVED.findall(worker.log.read_text(errors="replace")))
    return found


def first_email(work: Workload) -> str:
    address: str = work.envelopes[0].payload["metadata"]["email"]
    return address


async def batch_stopped_midway(
    engine: AsyncEngine, worker: WorkerProcess, db_port: int
) -> set[int]:
    """Pool processes whose transaction waits on the advisory lock the test holds."""
    found: set[int] = set()

    async def stopped() -> bool:
        async with engine.connect() as conn:
            blocked = await blocked_backends(conn)
        ours = connections_by_port(pool_children(worker), db_port)
        found.update(pid for port, pid in ours.items() if port in blocked)
        return bool(found)

    await eventually(stopped, timeout=20, what="a batch waiting on the held lock")
    return found


async def kill_pool_processes_mid_batch(
    engine: AsyncEngine,
    worker: WorkerProcess,
    db_port: int,
    broker: redis.Redis,
    work: Workload,
    *,
    kills: int,
) -> int:
    """SIGKILL pool processes caught inside a transaction, until `kills` or the work is done."""
    killed: set[int] = set()  # a killed process may linger a moment: count it once
    deadline = time.monotonic() + 20
    while len(killed) < kills and pending(broker, work.ids) and time.monotonic() < deadline:
        ours = connections_by_port(pool_children(worker), db_port)
        async with engine.connect() as conn:
            busy = await backends_in_transaction(conn)
        victims = {pid for port, pid in ours.items() if port in busy}
        for pid in victims - killed:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
            killed.add(pid)
        await asyncio.sleep(0.01)  # a polling interval, not a wait for work
    return len(killed)


async def test_kill_9_of_pool_processes_mid_batch_loses_and_doubles_nothing(
    fleet: Fleet,
    fault_env: dict[str, str],
    broker: redis.Redis,
    engine: AsyncEngine,
    tenant: Tenant,
    settings: Settings,
    measure: Callable[..., None],
) -> None:
    db_port = database_port(settings)
    worker = fleet.worker({**fault_env, **FAST_REDELIVERY}, name="pool-kill")
    work = burst(tenant.id, events=600, people=80, companies=6, per_message=10, seed=1)
    lock = email_lock_key(tenant.id, first_email(work))

    async with engine.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock})
        await holder.commit()
        push(broker, *work.messages, markers=work.envelopes)
        # The batches that name this e-mail stop inside their transaction: kill them there.
        midway = await batch_stopped_midway(engine, worker, db_port)
        for pid in midway:
            psutil.Process(pid).kill()
        await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock})
        await holder.commit()
    # More kills while the burst runs, each of a process caught inside a transaction.
    extra = await kill_pool_processes_mid_batch(engine, worker, db_port, broker, work, kills=4)
    last_kill = time.monotonic()

    await outcomes_of(broker, work, timeout=60)
    recovery = time.monotonic() - last_kill
    found = await assert_stored_exactly_once(engine, work)

    log = worker.log.read_text(errors="replace")
    lost = log.count("exited with 'signal 9 (SIGKILL)'")
    redelivered = sum(1 for n in deliveries(worker).values() if n > 1)
    # The batches stopped midway were surely running; a burst kill can race a batch's end and
    # hit a process between tasks, which Celery does not report, so only those are counted.
    assert lost >= len(midway), "the main process saw the killed batches' processes die"
    assert redelivered >= len(midway), "the killed batches were requeued and ran again"
    # Requeued by the main process (reject + requeue, to the back of the queue), not restored
    # by the visibility timeout, which this worker checks only every ~100 s.
    assert broker.hlen("unacked") == 0
    measure(
        accepted=len(work.ids),
        stored=found["events"],
        duplicates=found["events"] - len(work.ids),
        rows=found,
        killed_midway=len(midway),
        killed_during_burst=extra,
        worker_lost_errors=lost,
        messages_redelivered=redelivered,
        recovery_after_last_kill_s=round(recovery, 2),
    )


async def test_kill_9_of_the_whole_worker_then_a_restarted_worker_finishes(
    fleet: Fleet,
    fault_env: dict[str, str],
    broker: redis.Redis,
    engine: AsyncEngine,
    tenant: Tenant,
    settings: Settings,
    measure: Callable[..., None],
) -> None:
    db_port = database_port(settings)
    visibility = 10
    env = {
        **fault_env,
        "LEADSTREAM_VISIBILITY_TIMEOUT_SECONDS": str(visibility),
        "LEADSTREAM_TASK_TIME_LIMIT_SECONDS": "8",
    }
    first = fleet.worker(env, name="killed")
    work = burst(tenant.id, events=400, people=60, companies=6, per_message=10, seed=2)
    lock = email_lock_key(tenant.id, first_email(work))

    async with engine.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock})
        await holder.commit()
        push(broker, *work.messages, markers=work.envelopes)
        await batch_stopped_midway(engine, first, db_port)
        pool = pool_children(first)
        first.process.kill()
        first.process.wait()
        killed_at = time.monotonic()
        held = held_by_workers(broker)
        await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock})
        await holder.commit()

    async def pool_gone() -> bool:
        return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in pool)

    await eventually(pool_gone, timeout=10, what="the pool processes died with their parent")
    assert held, "the killed worker held no message: nothing was in flight"

    # A worker started at once takes the rest of the queue, but not what the dead one held:
    # those messages are younger than the visibility timeout when it starts, and it looks
    # again only ~100 s later.
    second = fleet.worker(env, name="restarted-at-once")
    started_before_timeout = time.monotonic() - killed_at < visibility - 1

    async def rest_done() -> bool:
        queued = broker.llen("leads") + broker.llen("activity")
        return queued == 0 and pending(broker, work.ids) <= len(held)

    await eventually(rest_done, timeout=30, what="the restarted worker drained the queue")
    parked = {i for i in work.ids if pending(broker, [i])}
    if started_before_timeout:
        # Only what the dead worker held may still wait: at least the batch stopped midway
        # (a message it had finished but not yet acknowledged is done, if held).
        assert parked and parked <= held, "only the dead worker's messages may still wait"
        assert held_by_workers(broker) == held, "they wait in kombu's unacked hash"

    # A worker started once they are older than the visibility timeout restores them at start.
    def oldest_age() -> float:
        scores = broker.zrange("unacked_index", 0, 0, withscores=True)
        return time.time() - scores[0][1] if scores else float("inf")

    async def timed_out() -> bool:
        return oldest_age() > visibility

    await eventually(timed_out, timeout=visibility + 5, what="the visibility timeout passed")
    third = fleet.worker(env, name="restarted-after-timeout")
    await outcomes_of(broker, work, timeout=30)
    recovery = time.monotonic() - killed_at
    found = await assert_stored_exactly_once(engine, work)
    assert broker.hlen("unacked") == 0
    measure(
        accepted=len(work.ids),
        stored=found["events"],
        duplicates=found["events"] - len(work.ids),
        rows=found,
        events_held_by_killed_worker=len(held),
        parked_after_immediate_restart=len(parked),
        immediate_restart_was_before_visibility_timeout=started_before_timeout,
        visibility_timeout_s=visibility,
        recovery_after_kill_s=round(recovery, 2),
        deliveries=sum(deliveries(first, second, third).values()),
    )
