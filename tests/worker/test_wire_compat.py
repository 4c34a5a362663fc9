"""A message queued by an API of the previous layout is consumed by this worker.

The message below is written out as the API's old `shared/queue.py` `celery_task_message`
produced it (Celery protocol 2 in kombu's Redis format, base64 body), not built with
`shared.broker.wire`: a change to the builder cannot hide a change to what the worker accepts.
"""

import base64
import uuid

import orjson
import redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.tables import Event
from shared.settings import Settings
from tests.support.messages import push, wait_outcomes
from tests.support.processes import WorkerProcess
from tests.support.tenants import Tenant


def golden_message(event_id: uuid.UUID, tenant_id: uuid.UUID) -> bytes:
    """The old API's bytes for one form submission; only the two ids are filled in."""
    envelope = {
        "id": str(event_id),
        "tenantId": str(tenant_id),
        "receivedAt": "2026-11-30T09:15:00.123456Z",
        "idempotencyKey": None,
        "notify": False,
        "payload": {
            "type": "form_submission",
            "person": {
                "firstName": "Gold",
                "emails": [{"value": "golden@example.com"}],
                "phones": [],
                "tags": [],
            },
            "company": {"name": "Golden Ltd"},
            "pageUrl": "https://example.com/contact",
        },
    }
    body = [[[envelope]], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    task_id = "0b6f3a52-6d5e-4c36-9d7e-2f4a8b1c9e01"
    return orjson.dumps(
        {
            "body": base64.b64encode(orjson.dumps(body)).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": "leadstream.process_events",
                "id": task_id,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": task_id,
                "parent_id": None,
                "argsrepr": "[<1 envelopes>]",
                "kwargsrepr": "{}",
                "origin": "leadstream-api@old-host:4242",
                "ignore_result": True,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": "leads"},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": "5c1d7f0e-8a2b-4e3c-9f6d-1a2b3c4d5e6f",
            },
        }
    )


async def test_a_message_of_the_previous_api_is_processed(
    worker: WorkerProcess, settings: Settings, engine: AsyncEngine, tenant: Tenant
) -> None:
    broker = redis.Redis.from_url(settings.redis_url)
    event_id = uuid.uuid4()
    # The API's "queued" marker is left out: the worker's outcome does not depend on it.
    push(broker, ("leads", golden_message(event_id, tenant.id)))
    outcome = (await wait_outcomes(broker, engine, [event_id]))[event_id]

    assert outcome.status == "processed" and outcome.http_status == 201
    assert outcome.body["person"]["emails"] == [{"value": "golden@example.com", "isPrimary": True}]
    assert outcome.body["company"]["name"] == "Golden Ltd"
    async with engine.connect() as conn:
        stored = (await conn.execute(select(Event).where(Event.id == event_id))).one()
    assert (stored.tenant_id, stored.event_type, stored.page_url) == (
        tenant.id,
        "form_submission",
        "https://example.com/contact",
    )
