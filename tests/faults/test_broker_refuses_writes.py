"""The broker refuses a task's retry.

Celery turns a retry it cannot publish into `Reject(requeue=False)`, which deletes the message:
events answered 202 would be gone. And kombu counts Redis' "OOM command not allowed" as an
unrecoverable error, which stops the worker. Neither may happen: the message must come back,
the worker must live, every event must be committed exactly once.

A Redis over maxmemory refuses the consumer's reject as well, so it would keep the message even
if the task let Celery drop it; only a refused retry with a broker that takes everything else
(injected by `tests.support.faulty_worker`) is the path on which a message is lost.
"""

from collections.abc import Awaitable, Callable

import pytest

from tests.faults.stack import FaultStack
from tests.faults.support import eventually, log_text
from tests.support.faulty_worker import FAULTY_WORKER

pytestmark = pytest.mark.faults


async def test_a_retry_the_broker_refuses_loses_nothing_and_the_worker_lives(
    faults: FaultStack,
) -> None:
    work = faults.burst(events=40, people=10, companies=2, per_message=10, seed=5)
    worker = faults.worker(
        name="broker-full",
        concurrency=1,
        # Each attempt on the held lock gives up fast, so the task soon retries.
        settings={"LEADSTREAM_DB_LOCK_TIMEOUT_MS": "200", "LEADSTREAM_TASK_MAX_RETRIES": "1000"},
    )

    def logged(event: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return event in log_text(worker)

        return check

    async with faults.first_email_locked(work):
        faults.push(work)
        await eventually(
            logged("batch.contention_retry"), timeout=30, what="a batch rerun on the held lock"
        )
        # From now on Redis refuses every write: the task's retry publish among them.
        faults.broker.config_set("maxmemory", "1")
        await eventually(
            logged("task.retry_not_published"), timeout=60, what="a retry the broker refused"
        )
        faults.broker.config_set("maxmemory", "0")
    outcomes = await faults.outcomes(work, timeout=150)
    rows = await faults.stored_exactly_once(work)
    alive = worker.process.poll() is None
    faults.measure(
        accepted=len(work.envelopes),
        stored=rows["events"],
        outcomes=len(outcomes),
        worker_alive=alive,
        unrecoverable_logged="Unrecoverable error" in log_text(worker),
    )
    assert alive, log_text(worker)[-3000:]
    assert len(outcomes) == len(work.envelopes)


async def test_retries_refused_while_the_broker_takes_everything_else_lose_nothing(
    faults: FaultStack,
) -> None:
    work = faults.burst(events=40, people=10, companies=2, per_message=10, seed=6)
    refusals = 3
    worker = faults.worker(
        name="retry-refused",
        concurrency=1,
        settings={
            # Each attempt on the held lock gives up fast, so the task soon retries.
            "LEADSTREAM_DB_LOCK_TIMEOUT_MS": "200",
            "LEADSTREAM_TASK_MAX_RETRIES": "1000",
            "LEADSTREAM_TEST_REFUSED_RETRIES": str(refusals),
        },
        app=FAULTY_WORKER,
    )

    def refused() -> int:
        return log_text(worker).count('"test.retry_refused"')

    async def all_refused() -> bool:
        return refused() >= refusals

    async with faults.first_email_locked(work):
        faults.push(work)
        waited = await eventually(all_refused, timeout=90, what=f"{refusals} refused retries")
    outcomes = await faults.outcomes(work, timeout=150)
    rows = await faults.stored_exactly_once(work)
    faults.measure(
        accepted=len(work.envelopes),
        stored=rows["events"],
        outcomes=len(outcomes),
        refused_retries=refused(),
        handled=log_text(worker).count('"task.retry_not_published"'),
        refusals_within_s=round(waited, 1),
    )
    assert refused() == refusals
    assert len(outcomes) == len(work.envelopes)
