"""The enqueue policy over a stand-in writer: pure, no services."""

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest

from ingest_api.enqueuer import Enqueuer
from shared.broker.writers import QueueUnavailableError
from shared.contract.queues import Envelope
from tests.support.writers import StandInWriter

QUEUE = "activity"


def _envelope() -> Envelope:
    return Envelope(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        received_at=datetime.now(UTC),
        payload={"type": "page_view", "visitorId": "v"},
    )


@pytest.mark.parametrize("fail", [QueueUnavailableError("down"), ValueError("a bug")])
async def test_every_waiter_of_a_lane_hears_the_writers_error_as_it_was(fail: Exception) -> None:
    writer = StandInWriter(fail)
    enqueuer = Enqueuer(writer, timeout=1, linger={QUEUE: 5}, flush_events={QUEUE: 4})
    answers = await asyncio.gather(
        *(enqueuer.enqueue(_envelope(), queue=QUEUE) for _ in range(4)), return_exceptions=True
    )
    assert answers == [fail] * 4
    assert [count for count, _ in writer.writes] == [4]  # one write for the full message
    for call in (
        enqueuer.enqueue_keyed(_envelope(), queue=QUEUE, key="k", key_ttl=60),
        enqueuer.enqueue_all({QUEUE: [_envelope()]}),
    ):
        with pytest.raises(type(fail)):
            await call
    await enqueuer.close()


async def test_a_write_that_never_answers_is_a_503_within_the_timeout() -> None:
    writer = StandInWriter(hang=True)
    enqueuer = Enqueuer(writer, timeout=0.2)
    started = time.time()
    with pytest.raises(QueueUnavailableError, match="in time"):
        await enqueuer.enqueue(_envelope(), queue=QUEUE)
    assert time.time() - started < 0.5
    # The write carried the deadline its caller gave up at.
    [(_, deadline)] = writer.writes
    assert started + 0.2 <= deadline + 0.01 and deadline < started + 0.3
    writer.release.set()
    await enqueuer.close()


async def test_queues_without_a_linger_never_wait() -> None:
    writer = StandInWriter()
    enqueuer = Enqueuer(writer, timeout=1, linger={"other": 60}, flush_events={"other": 100})
    started = time.time()
    await enqueuer.enqueue(_envelope(), queue=QUEUE)
    assert time.time() - started < 0.5
    assert [count for count, _ in writer.writes] == [1]
