"""The same pipeline with RabbitMQ (quorum queues) as the broker: only the broker URL changes."""

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import kombu
import pytest
import redis
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.broker.wire import publish_wires
from shared.contract.outcomes import OUTCOME_STREAM
from shared.settings import Settings
from tests.support.messages import envelope, totals, wait_outcomes
from tests.support.processes import start_api, start_worker, stop
from tests.support.rabbitmq import RABBITMQ_URL, rabbitmq_answers
from tests.support.tenants import Tenant

pytestmark = pytest.mark.skipif(not rabbitmq_answers(), reason="no RabbitMQ on this machine")


@pytest.fixture(scope="module")
def rabbit_env(service_env: dict[str, str]) -> dict[str, str]:
    return {**service_env, "LEADSTREAM_BROKER_URL": RABBITMQ_URL}


@pytest.fixture(scope="module")
def rabbit_stack(
    rabbit_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A worker and an API whose broker is RabbitMQ (outcomes still go through Redis)."""
    logs = tmp_path_factory.mktemp("rabbit")
    worker = start_worker(rabbit_env, logs / "worker.log")
    api = start_api(rabbit_env, logs / "api.log")
    yield api.url
    stop(api.process)
    stop(worker.process)


async def test_events_flow_through_rabbitmq(
    rabbit_stack: str, tenant: Tenant, engine: AsyncEngine, settings: Settings
) -> None:
    body = {
        "type": "form_submission",
        "person": {"emails": ["rabbit@example.com"]},
        "company": {"name": "Warren Inc"},
    }
    async with httpx.AsyncClient(base_url=rabbit_stack, headers=tenant.headers, timeout=30) as http:
        first = await http.post("/api/partner/events", json=body, headers={"Prefer": "wait=15"})
        assert first.status_code == 201, first.text
        views = [
            await http.post(
                "/api/partner/events",
                json={"type": "page_view", "person": {"emails": ["RABBIT@example.com"]}},
            )
            for _ in range(20)
        ]
        assert {v.status_code for v in views} == {202}
        again = await http.post("/api/partner/events", json=body, headers={"Prefer": "wait=15"})
        assert again.status_code == 200
    ids = [uuid.UUID(v.json()["id"]) for v in views]
    outcomes = await wait_outcomes(redis.Redis.from_url(settings.redis_url), engine, ids)
    assert {o.status for o in outcomes.values()} == {"processed"}
    assert await totals(engine, tenant.id) == {
        "events": 22,
        "people": 1,
        "emails": 1,
        "companies": 1,
    }


async def test_a_message_published_twice_to_rabbitmq_stores_one_event(
    rabbit_stack: str, tenant: Tenant, engine: AsyncEngine, settings: Settings
) -> None:
    e = envelope(tenant.id, {"type": "inquiry", "person": {"emails": ["twice.rabbit@example.com"]}})
    with kombu.Connection(RABBITMQ_URL, transport_options={"confirm_publish": True}) as conn:
        publish_wires(conn, "leads", [[e.to_wire()], [e.to_wire()]])
    client = redis.Redis.from_url(settings.redis_url)
    outcome = (await wait_outcomes(client, engine, [e.id]))[e.id]
    assert outcome.status == "processed"
    # Each processed copy appends its outcome to the stream: wait for both, then count.
    deadline = asyncio.get_running_loop().time() + 30
    while (
        sum(
            fields[b"id"] == str(e.id).encode()
            for _, fields in client.xrevrange(OUTCOME_STREAM, count=2000)
        )
        < 2
    ):
        assert asyncio.get_running_loop().time() < deadline, "the second copy was not consumed"
        await asyncio.sleep(0.05)
    assert await totals(engine, tenant.id) == {
        "events": 1,
        "people": 1,
        "emails": 1,
        "companies": 0,
    }
