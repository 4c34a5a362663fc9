"""The unit of work on real services: what a committed event leaves in Redis, the lock budget,
and splitting a message the database cannot take in one transaction (53200, a repeated 57014)."""

import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import orjson
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.contract.outcomes import (
    OUTCOME_STREAM,
    StoredOutcome,
    event_key,
    outcome_channel,
    queued_marker,
)
from shared.contract.queues import Envelope
from shared.settings import Settings
from tests.support.messages import contact_rich, envelope, totals
from tests.support.tenants import Tenant
from worker.errors import Failure, TransientError, classify
from worker.matching import batch
from worker.matching.load import lock_estimate, lock_names
from worker.matching.parse import parse
from worker.unit_of_work import Limits, commit_batch, publish_outcomes, split_by_locks

TENANT = uuid.uuid4()
PAGE_VIEW = {"type": "page_view", "visitorId": "v-publish"}


@pytest.fixture
def broker(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


def _processed(event_id: uuid.UUID, http_status: int = 201) -> StoredOutcome:
    body: dict[str, Any] = {"event": {"id": str(event_id), "eventType": "page_view"}}
    return StoredOutcome(tenant_id=TENANT, status="processed", http_status=http_status, body=body)


def test_a_committed_event_leaves_a_notice_of_ids_and_statuses_not_its_outcome(
    broker: redis.Redis, settings: Settings
) -> None:
    plain = envelope(TENANT, PAGE_VIEW)
    waited = envelope(TENANT, PAGE_VIEW, notify=True)
    keyed = envelope(TENANT, PAGE_VIEW, idempotency_key="order-7")
    failed = envelope(TENANT, PAGE_VIEW)
    # A keyed duplicate the worker answered with the first event's outcome.
    duplicate = envelope(TENANT, PAGE_VIEW, idempotency_key="order-7")
    problem = {"type": "about:blank", "title": "Company not found", "status": 422}
    outcomes = {
        plain.id: _processed(plain.id),
        waited.id: _processed(waited.id, 200),
        keyed.id: _processed(keyed.id),
        failed.id: StoredOutcome(tenant_id=TENANT, status="failed", http_status=422, body=problem),
        duplicate.id: _processed(keyed.id),
    }
    envelopes = [plain, waited, keyed, failed, duplicate]
    for e in envelopes:
        broker.set(event_key(e.id), queued_marker(TENANT), ex=600)
    channel = outcome_channel(settings.redis_url, settings.deployment_id)
    pubsub = broker.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    mine = {str(e.id) for e in envelopes}  # the session's worker may publish too
    try:
        publish_outcomes(broker, envelopes, outcomes, settings)
        notices = _notices(pubsub, mine, wait=2.0)
    finally:
        pubsub.close()

    # Nothing of a committed event stays in Redis unless someone waits for it...
    for e in (plain, keyed, failed):
        assert broker.exists(event_key(e.id)) == 0
    # ...the waiting caller's copy lives briefly; a duplicate's as long as outcomes did.
    assert StoredOutcome.loads(broker.get(event_key(waited.id))) == outcomes[waited.id]
    assert 0 < broker.ttl(event_key(waited.id)) <= settings.outcome_wait_ttl_seconds
    assert StoredOutcome.loads(broker.get(event_key(duplicate.id))) == outcomes[keyed.id]
    assert 0 < broker.ttl(event_key(duplicate.id)) <= settings.outcome_ttl_seconds

    expected = {e.id: _announced(e, outcomes[e.id]) for e in envelopes}
    entries = [_decoded(fields) for _, fields in broker.xrevrange(OUTCOME_STREAM, count=1000)]
    assert [n for n in reversed(entries) if n["id"] in mine] == [expected[e.id] for e in envelopes]
    # The channel hears the events a caller waits for, or whose replays may wait (keyed).
    assert notices == [expected[e.id] for e in (waited, keyed, duplicate)]


def test_the_outcome_channel_is_per_deployment_and_per_database() -> None:
    channels = {
        outcome_channel("redis://127.0.0.1:6379/0", "leadstream"),
        outcome_channel("redis://127.0.0.1:6379/15", "leadstream"),
        outcome_channel("redis://127.0.0.1:6379", "leadstream"),  # db 0 by default
        outcome_channel("redis://127.0.0.1:6379/0", "staging"),
    }
    assert channels == {
        "ls:outcomes:leadstream:0",
        "ls:outcomes:leadstream:15",
        "ls:outcomes:staging:0",
    }


def _announced(e: Envelope, outcome: StoredOutcome) -> dict[str, Any]:
    return {
        "id": str(e.id),
        "tenantId": str(outcome.tenant_id),
        "status": outcome.status,
        "httpStatus": outcome.http_status,
    }


def _decoded(fields: dict[bytes, bytes]) -> dict[str, Any]:
    data: dict[str, Any] = {k.decode(): v.decode() for k, v in fields.items()}
    data["httpStatus"] = int(data["httpStatus"])
    return data


def _notices(pubsub: Any, ids: set[str], wait: float) -> list[dict[str, Any]]:
    """The notices about these ids heard within `wait` seconds, in order."""
    heard: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        message = pubsub.get_message(timeout=left)
        if message is not None and (notice := orjson.loads(message["data"]))["id"] in ids:
            heard.append(notice)
    return heard


def test_a_message_is_split_in_order_within_the_budget() -> None:
    events = contact_rich(uuid.uuid4(), 10)
    parts = split_by_locks(events, 50)
    assert [len(p) for p in parts] == [4, 4, 2]  # 12 locks each: 48 + 48 + 24
    assert [e for p in parts for e in p] == events
    assert split_by_locks(events[:1], 5) == [events[:1]]  # too big alone: a part of its own


def test_an_external_id_counts_in_the_lock_budget() -> None:
    tenant = uuid.uuid4()
    events = [
        envelope(
            tenant,
            {"type": "inquiry", "person": {"externalId": f"u-{i}", "emails": [f"u{i}@x.example"]}},
        )
        for i in range(4)
    ]
    # The event, its external id and its e-mail: the estimate is what lock_names takes.
    assert [lock_estimate(e) for e in events] == [3] * 4
    assert [len(lock_names([parse(e, "US")])) for e in events] == [3] * 4
    assert [len(p) for p in split_by_locks(events, 6)] == [2, 2]


async def test_events_needing_more_locks_than_the_budget_commit_each_once(
    engine: AsyncEngine, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[int] = []
    real_lock_all = batch.lock_all

    async def counting(conn: AsyncConnection, names: Iterable[str]) -> None:
        names = set(names)
        taken.append(len(names))
        await real_lock_all(conn, names)

    monkeypatch.setattr(batch, "lock_all", counting)
    events = contact_rich(tenant.id, 30)
    result = await commit_batch(engine, events, limits=Limits(lock_budget=60))
    assert result.created_events == 30 and result.failed_events == 0
    assert len(taken) == 6 and max(taken) <= 60 and sum(taken) == 30 * 12
    assert await totals(engine, tenant.id) == {
        "events": 30,
        "people": 30,
        "emails": 150,
        "companies": 0,
    }
    # Redelivered whole, in one budget-less transaction: nothing is stored twice.
    again = await commit_batch(engine, events, limits=Limits(lock_budget=10_000))
    assert again.replayed_events == 30 and (await totals(engine, tenant.id))["events"] == 30


@pytest.fixture
async def lock_table_full(engine: AsyncEngine) -> AsyncIterator[str]:
    """PostgreSQL's own "out of shared memory" (53200) for any statement inserting more than
    two events carrying the marker: what a full lock table does to a big transaction."""
    async for marker in _too_big_fails(engine, "53200", "out of shared memory"):
        yield marker


@pytest.fixture
async def times_out(engine: AsyncEngine) -> AsyncIterator[str]:
    """A statement timeout (57014) for any statement inserting more than two marked events."""
    async for marker in _too_big_fails(engine, "57014", "canceling statement due to timeout"):
        yield marker


async def _too_big_fails(engine: AsyncEngine, state: str, message: str) -> AsyncIterator[str]:
    marker = f"big_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as conn:
        await conn.execute(
            text(f"""
            CREATE FUNCTION {marker}() RETURNS trigger AS $$
            BEGIN
              IF (SELECT count(*) FROM new_rows WHERE message = '{marker}') > 2 THEN
                RAISE EXCEPTION '{message}' USING ERRCODE = '{state}';
              END IF;
              RETURN NULL;
            END $$ LANGUAGE plpgsql""")
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {marker} AFTER INSERT ON events REFERENCING NEW TABLE AS "
                f"new_rows FOR EACH STATEMENT EXECUTE FUNCTION {marker}()"
            )
        )
    yield marker
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP TRIGGER {marker} ON events"))
        await conn.execute(text(f"DROP FUNCTION {marker}()"))


async def test_out_of_shared_memory_splits_the_message_instead_of_retrying_it(
    engine: AsyncEngine, tenant: Tenant, lock_table_full: str
) -> None:
    events = contact_rich(tenant.id, 9, message=lock_table_full)
    # No TransientError (which the task would retry 40 times, failing alike every time).
    result = await commit_batch(engine, events)
    assert (result.created_events, result.failed_events) == (9, 0)
    assert set(result.outcomes) == {e.id for e in events}
    assert all(o.status == "processed" for o in result.outcomes.values())
    assert (await totals(engine, tenant.id))["events"] == 9


async def test_a_repeated_statement_timeout_splits_the_message(
    engine: AsyncEngine, tenant: Tenant, times_out: str
) -> None:
    events = contact_rich(tenant.id, 5, message=times_out)
    # The first time, a timeout may be load: the task retries the message later.
    with pytest.raises(TransientError):
        await commit_batch(engine, events)
    assert (await totals(engine, tenant.id))["events"] == 0
    # The retried message times out again: it is committed in halves, not retried 40 times.
    result = await commit_batch(engine, events, failed_before=True)
    assert (result.created_events, result.failed_events) == (5, 0)
    assert (await totals(engine, tenant.id))["events"] == 5


def _database_error(state: str) -> DBAPIError:
    class DriverError(Exception):
        sqlstate = state

    return DBAPIError("statement", {}, DriverError("failed"))


def test_unavailability_is_transient_and_any_other_error_poison() -> None:
    assert classify(ConnectionRefusedError()) is Failure.TRANSIENT
    assert classify(redis.exceptions.OutOfMemoryError("OOM")) is Failure.TRANSIENT
    assert classify(RuntimeError("a bug")) is Failure.POISON
    assert classify(KeyError("a bug")) is Failure.POISON


def test_the_classification_of_a_message_too_big_for_one_transaction() -> None:
    assert classify(_database_error("53200")) is Failure.SPLIT
    assert classify(_database_error("53200"), failed_before=True) is Failure.SPLIT
    # A statement timeout may be a passing spike once; on a message that failed before, it is
    # the message's size.
    assert classify(_database_error("57014")) is Failure.TRANSIENT
    assert classify(_database_error("57014"), failed_before=True) is Failure.SPLIT
    # Other resource shortages are still unavailability.
    assert classify(_database_error("53300"), failed_before=True) is Failure.TRANSIENT
