"""The enqueue policy over a stand-in writer: pure, no services."""

import asyncio
import time
import uuid
from datetime import UTC, datetime

import pytest

from ingest_api.enqueuer import Enqueuer
from shared.broker.writers import Claim, QueueUnavailableError, write_bound
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


async def test_every_waiter_of_a_lane_hears_a_broker_failure() -> None:
    fail = QueueUnavailableError("down")
    writer = StandInWriter(fail)
    enqueuer = Enqueuer(writer, timeout=1, linger={QUEUE: 5}, flush_events={QUEUE: 4})
    answers = await asyncio.gather(
        *(enqueuer.enqueue(_envelope(), queue=QUEUE) for _ in range(4)), return_exceptions=True
    )
    assert answers == [fail] * 4
    assert [count for count, _ in writer.writes] == [4]  # one write for the full message
    with pytest.raises(QueueUnavailableError):
        await enqueuer.enqueue_all({QUEUE: [_envelope()]})
    await enqueuer.close()


async def test_a_bug_one_event_causes_fails_its_caller_only() -> None:
    events = [_envelope() for _ in range(4)]
    bug = ValueError("a bug")
    writer = StandInWriter(bug, fail_for={events[2].id})
    enqueuer = Enqueuer(writer, timeout=1, linger={QUEUE: 5}, flush_events={QUEUE: 4})
    answers = await asyncio.gather(
        *(enqueuer.enqueue(e, queue=QUEUE) for e in events), return_exceptions=True
    )
    assert answers == [None, None, bug, None]
    # The whole message first, then each event alone.
    assert [count for count, _ in writer.writes] == [4, 1, 1, 1, 1]
    assert writer.written == [events[0], events[1], events[3]]
    await enqueuer.close()


async def test_keyed_events_are_coalesced_each_with_its_own_answer() -> None:
    writer = StandInWriter()
    enqueuer = Enqueuer(writer, timeout=1, linger={QUEUE: 5}, flush_events={QUEUE: 4})
    events = [_envelope() for _ in range(4)]
    claims = [Claim(b"k1", b"first"), Claim(b"k2", b"second"), Claim(b"k1", b"third"), None]
    answers = await asyncio.gather(
        *(enqueuer.enqueue(e, queue=QUEUE, claim=c) for e, c in zip(events, claims, strict=True))
    )
    assert answers == [None, None, b"first", None]  # the third's key was the first's
    assert [count for count, _ in writer.writes] == [4]  # one write
    assert writer.written == [events[0], events[1], events[3]]
    await enqueuer.close()


async def test_a_write_that_never_answers_is_a_503_within_the_writers_bound() -> None:
    writer = StandInWriter(hang=True)
    enqueuer = Enqueuer(writer, timeout=0.2)
    started = time.time()
    with pytest.raises(QueueUnavailableError, match="in time"):
        await enqueuer.enqueue(_envelope(), queue=QUEUE)
    assert time.time() - started < 2 * write_bound(0.2) + 0.2
    [(_, timeout)] = writer.writes  # the broker's time the write was given
    assert timeout == 0.2
    writer.release.set()
    await enqueuer.close()


async def test_queues_without_a_linger_never_wait() -> None:
    writer = StandInWriter()
    enqueuer = Enqueuer(writer, timeout=1, linger={"other": 60}, flush_events={"other": 100})
    started = time.time()
    await enqueuer.enqueue(_envelope(), queue=QUEUE)
    assert time.time() - started < 0.5
    assert [count for count, _ in writer.writes] == [1]
