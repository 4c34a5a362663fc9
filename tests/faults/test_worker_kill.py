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

import psutil
import pytest

from shared.settings import Settings
from tests.faults.stack import FaultStack
from tests.faults.support import (
    Workload,
    backends_in_transaction,
    connections_by_port,
    eventually,
    held_by_workers,
    pending,
    pool_children,
)
from tests.support.processes import WorkerProcess

pytestmark = pytest.mark.faults

_RECEIVED = re.compile(r"Task leadstream\.process_events\[([0-9a-f-]+)\] received")


def deliveries(*workers: WorkerProcess) -> Counter[str]:
    """How many times each task id was handed to a worker (Celery logs every receipt)."""
    found: Counter[str] = Counter()
    for worker in workers:
        found.update(_RECEIVED.findall(worker.log.read_text(errors="replace")))
    return found


async def kill_pool_processes_mid_batch(
    faults: FaultStack, worker: WorkerProcess, work: Workload, *, kills: int
) -> int:
    """SIGKILL pool processes caught inside a transaction, until `kills` or the work is done."""
    killed: set[int] = set()  # a killed process may linger a moment: count it once
    deadline = time.monotonic() + 20
    while len(killed) < kills and pending(faults.broker, work.ids) and time.monotonic() < deadline:
        ours = connections_by_port(pool_children(worker), faults.db_port)
        async with faults.engine.connect() as conn:
            busy = await backends_in_transaction(conn)
        victims = {pid for port, pid in ours.items() if port in busy}
        for pid in victims - killed:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()
            killed.add(pid)
        await asyncio.sleep(0.01)  # a polling interval, not a wait for work
    return len(killed)


async def test_kill_9_of_pool_processes_mid_batch_loses_and_doubles_nothing(
    faults: FaultStack,
) -> None:
    worker = faults.worker(name="pool-kill", fast_redelivery=True)
    work = faults.burst(events=600, people=80, companies=6, per_message=10, seed=1)

    async with faults.first_email_locked(work):
        faults.push(work)
        # The batches that name this e-mail stop inside their transaction: kill them there.
        midway = await faults.batch_stopped_midway(worker)
        for pid in midway:
            psutil.Process(pid).kill()
    # More kills while the burst runs, each of a process caught inside a transaction.
    extra = await kill_pool_processes_mid_batch(faults, worker, work, kills=4)
    last_kill = time.monotonic()

    await faults.outcomes(work, timeout=60)
    recovery = time.monotonic() - last_kill
    found = await faults.stored_exactly_once(work)

    log = worker.log.read_text(errors="replace")
    lost = log.count("exited with 'signal 9 (SIGKILL)'")
    redelivered = sum(1 for n in deliveries(worker).values() if n > 1)
    # The batches stopped midway were surely running; a burst kill can race a batch's end and
    # hit a process between tasks, which Celery does not report, so only those are counted.
    assert lost >= len(midway), "the main process saw the killed batches' processes die"
    assert redelivered >= len(midway), "the killed batches were requeued and ran again"
    # Requeued by the main process (reject + requeue, to the back of the queue), not restored
    # by the visibility timeout, which this worker checks only every ~100 s.
    assert faults.broker.hlen("unacked") == 0
    faults.measure(
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
    faults: FaultStack,
) -> None:
    visibility = 10
    env = {
        "LEADSTREAM_VISIBILITY_TIMEOUT_SECONDS": str(visibility),
        "LEADSTREAM_TASK_TIME_LIMIT_SECONDS": "8",
    }
    broker = faults.broker
    first = faults.worker(name="killed", settings=env)
    work = faults.burst(events=400, people=60, companies=6, per_message=10, seed=2)

    async with faults.first_email_locked(work):
        faults.push(work)
        await faults.batch_stopped_midway(first)
        pool = pool_children(first)
        first.process.kill()
        first.process.wait()
        killed_at = time.monotonic()
        held = held_by_workers(broker)

    async def pool_gone() -> bool:
        return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in pool)

    await eventually(pool_gone, timeout=10, what="the pool processes died with their parent")
    assert held, "the killed worker held no message: nothing was in flight"

    # A worker started at once takes the rest of the queue, but not what the dead one held:
    # those messages are younger than the visibility timeout when it starts, and it looks
    # again only ~100 s later.
    second = faults.worker(name="restarted-at-once", settings=env)
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
        return time.time() - float(scores[0][1]) if scores else float("inf")

    async def timed_out() -> bool:
        return oldest_age() > visibility

    await eventually(timed_out, timeout=visibility + 5, what="the visibility timeout passed")
    third = faults.worker(name="restarted-after-timeout", settings=env)
    await faults.outcomes(work, timeout=30)
    recovery = time.monotonic() - killed_at
    found = await faults.stored_exactly_once(work)
    assert broker.hlen("unacked") == 0
    faults.measure(
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


async def test_kill_9_of_a_whole_worker_its_events_are_committed_within_a_minute(
    faults: FaultStack,
) -> None:
    """With the default settings, a surviving worker takes over what a killed one held."""
    survivor = faults.worker(name="survivor")
    killed = faults.worker(name="killed-with-defaults")
    work = faults.burst(events=200, people=40, companies=4, per_message=10, seed=4)
    async with faults.first_email_locked(work):
        faults.push(work)
        await faults.batch_stopped_midway(killed)
        killed.process.kill()
        killed.process.wait()
        killed_at = time.monotonic()
        held = held_by_workers(faults.broker)
    assert held, "the killed worker held no message: nothing was in flight"
    await faults.outcomes(work, timeout=120)
    recovery = time.monotonic() - killed_at
    found = await faults.stored_exactly_once(work)
    faults.measure(
        accepted=len(work.ids),
        stored=found["events"],
        events_held_by_killed_worker=len(held),
        visibility_timeout_s=Settings().visibility_timeout_seconds,
        recovery_after_kill_s=round(recovery, 2),
    )
    assert recovery < 60, f"the killed worker's events took {recovery:.0f} s to come back"
    assert survivor.process.poll() is None
