"""Publishing outcomes, against the real Redis: what a committed event leaves behind there."""

import time
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from shared.contract.outcomes import (
    OUTCOME_STREAM,
    StoredOutcome,
    event_key,
    outcome_channel,
    queued_marker,
)
from shared.contract.queues import Envelope
from shared.settings import Settings
from tests.support.messages import envelope
from worker.unit_of_work import publish_outcomes

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
