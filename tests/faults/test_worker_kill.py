"""`kill -9` of worker processes in the middle of a batch.

What kombu's Redis transport and Celery really do (verified here and by hand, kombu 5.7):

* A pool process killed with -9: the main process sees WorkerLostError and, because the task
  is `acks_late` + `reject_on_worker_lost`, rejects the message with requeue, which pushes it
  straight back onto its queue (`QoS.reject` -> `restore_by_tag`). It is redelivered within
  about a second; the visibility timeout plays no part.
* The main process killed with -9: its pool processes die with it (Celery sets PDEATHSIG), and
  the messages it had taken (up to concurrency x prefetch multiplier) stay in the `unacked`
  hash: nothing is lost, but nothing brings them back until they are older than the visibility
  timeout AND some worker runs `restore_visible`. kombu's defaults look every 10 s x a
  throttle of 10 = ~100 s; the app looks every `RESTORE_SWEEP_SECONDS` (5 s), so with the
  default visibility timeout (45 s) a worker restarted at once, or any other worker, restores
  them within about 50 s of the kill. The tests show both cases with the defaults.
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


async def test_kill_9_of_the_only_worker_then_one_restarted_at_once_finishes_within_a_minute(
    faults: FaultStack,
) -> None:
    """With the default settings, as a supervisor restarts a killed worker at once."""
    broker = faults.broker
    first = faults.worker(name="killed")
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

    # The restarted worker drains the queue first; what the dead one held waits in kombu's
    # unacked hash until it is older than the visibility timeout, then the sweep restores it.
    second = faults.worker(name="restarted-at-once")

    async def rest_done() -> bool:
        queued = broker.llen("leads") + broker.llen("activity")
        return queued == 0 and pending(broker, work.ids) <= len(held)

    await eventually(rest_done, timeout=45, what="the restarted worker drained the queue")
    waited = time.monotonic() - killed_at
    parked = {i for i in work.ids if pending(broker, [i])}
    visibility = Settings().visibility_timeout_seconds
    if waited < visibility - 1:
        assert parked and parked <= held, "only the dead worker's messages may still wait"

    await faults.outcomes(work, timeout=90)
    recovery = time.monotonic() - killed_at
    found = await faults.stored_exactly_once(work)
    assert broker.hlen("unacked") == 0
    faults.measure(
        accepted=len(work.ids),
        stored=found["events"],
        duplicates=found["events"] - len(work.ids),
        rows=found,
        events_held_by_killed_worker=len(held),
        parked_after_queue_drained=len(parked),
        visibility_timeout_s=visibility,
        recovery_after_kill_s=round(recovery, 2),
        deliveries=sum(deliveries(first, second).values()),
    )
    assert recovery < 60, f"the killed worker's events took {recovery:.0f} s to come back"


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
