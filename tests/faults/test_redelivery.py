"""Redelivery: the same message consumed twice at once by two worker processes.

Kombu's Redis transport redelivers a message after the visibility timeout or when a worker
restores it, while the first consumer may still be running it; a producer may also publish a
message twice. Two copies of every message are LPUSHed in one command, and two separate
`celery worker` processes (one pool process each) take them side by side.
"""

import time
from collections import defaultdict
from datetime import datetime, timedelta

import pytest

from shared.contract.outcomes import event_key, queued_marker
from tests.faults.stack import FaultStack
from tests.faults.support import log_records

pytestmark = pytest.mark.faults


async def test_a_message_taken_by_two_workers_at_once_stores_each_event_once(
    faults: FaultStack,
) -> None:
    workers = [faults.worker(name=f"twin-{k}", concurrency=1) for k in range(2)]
    work = faults.burst(events=300, people=40, companies=5, per_message=5, seed=4)

    # Both copies of the first message stop on this lock, each inside its own transaction.
    async with faults.first_email_locked(work):
        pipe = faults.broker.pipeline(transaction=True)  # everything lands at one instant
        for e in work.envelopes:
            pipe.set(event_key(e.id), queued_marker(e.tenant_id))
        for queue, body in work.messages:
            pipe.lpush(queue, body, body)
        pipe.execute()
        await faults.batch_stopped_midway(*workers)  # in each worker: both copies
    released = time.monotonic()

    outcomes = await faults.outcomes(work, timeout=60)
    elapsed = time.monotonic() - released
    found = await faults.stored_exactly_once(work)
    created_people = sum(bool(o.body and o.body.get("wasPersonCreated")) for o in outcomes.values())
    assert created_people == found["people"], "each person created by exactly one event"

    records = log_records(*workers)
    batches = [r for r in records if r["event"] == "batch.processed"]
    assert sum(r["created"] for r in batches) == len(work.ids), "each event created once"
    assert sum(r["replayed"] for r in batches) == len(work.ids), "and replayed by the twin"
    # The two copies share a task id: which worker ran each, and did the runs overlap?
    runs: dict[str, list[tuple[int, datetime, datetime]]] = defaultdict(list)
    for k, worker in enumerate(workers):
        for r in log_records(worker):
            if r["event"] == "batch.processed":
                end = datetime.fromisoformat(r["timestamp"])
                runs[r["task_id"]].append((k, end - timedelta(milliseconds=r["ms"]), end))
    split = [v for v in runs.values() if len(v) == 2 and v[0][0] != v[1][0]]
    overlapping = [v for v in split if v[0][1] < v[1][2] and v[1][1] < v[0][2]]
    assert overlapping, "no message ran in both workers at the same time"
    retries = sum(r["event"] == "task.retry" for r in records)
    faults.measure(
        accepted=len(work.ids),
        deliveries=2 * len(work.ids),
        stored=found["events"],
        duplicates=found["events"] - len(work.ids),
        rows=found,
        messages=len(work.messages),
        copies_run_by_both_workers=len(split),
        copies_run_at_the_same_time=len(overlapping),
        contention_retries=sum(r["event"] == "batch.contention_retry" for r in records),
        task_retries=retries,
        done_after_release_s=round(elapsed, 2),
    )
