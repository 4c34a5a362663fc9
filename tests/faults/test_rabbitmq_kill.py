"""`kill -9` of a worker on RabbitMQ: the broker hands back what it held as the connection dies.

RabbitMQ requeues a consumer's unacknowledged deliveries when its connection closes, so there
is no visibility timeout to wait for (the Redis transport's case, tests/faults/
test_worker_kill.py): another worker has them at once.
"""

import time
from collections.abc import Callable
from pathlib import Path

import kombu
import pytest
import redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.broker.wire import publish_wires
from shared.contract.queues import ACTIVITY_QUEUE, LEADS_QUEUE, queue_for
from shared.settings import Settings
from tests.faults.support import (
    assert_stored_exactly_once,
    blocked_backends,
    burst,
    connections_by_port,
    database_port,
    email_lock_key,
    eventually,
    pool_children,
)
from tests.support.messages import wait_outcomes
from tests.support.processes import start_worker, stop
from tests.support.rabbitmq import RABBITMQ_URL, rabbitmq_answers
from tests.support.tenants import Tenant

pytestmark = [
    pytest.mark.faults,
    pytest.mark.skipif(not rabbitmq_answers(), reason="no RabbitMQ on this machine"),
]


async def test_kill_9_of_a_worker_on_rabbitmq_its_events_come_back_at_once(
    service_env: dict[str, str],
    engine: AsyncEngine,
    settings: Settings,
    tenant: Tenant,
    tmp_path: Path,
    measure: Callable[..., None],
) -> None:
    env = {**service_env, "LEADSTREAM_BROKER_URL": RABBITMQ_URL}
    work = burst(tenant.id, events=200, people=40, companies=4, per_message=10, seed=5)
    with kombu.Connection(RABBITMQ_URL) as conn:
        for queue in (LEADS_QUEUE, ACTIVITY_QUEUE):  # what an earlier run may have left
            with conn.channel() as channel:
                channel.queue_purge(queue)
    killed = start_worker(env, tmp_path / "killed.log")
    survivor = None
    lock = email_lock_key(tenant.id, work.envelopes[0].payload["metadata"]["email"])
    try:
        async with engine.connect() as holder:
            await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": lock})
            await holder.commit()
            with kombu.Connection(RABBITMQ_URL, transport_options={"confirm_publish": True}) as c:
                for start in range(0, len(work.envelopes), 10):
                    chunk = work.envelopes[start : start + 10]
                    publish_wires(
                        c, queue_for(chunk[0].payload["type"]), [[e.to_wire() for e in chunk]]
                    )

            async def stopped() -> bool:
                async with engine.connect() as conn:
                    blocked = await blocked_backends(conn)
                ours = connections_by_port(pool_children(killed), database_port(settings))
                return any(port in blocked for port in ours)

            await eventually(stopped, timeout=30, what="a batch waiting on the held lock")
            killed.process.kill()
            killed.process.wait()
            killed_at = time.monotonic()
            await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": lock})
            await holder.commit()
        survivor = start_worker(env, tmp_path / "survivor.log")
        outcomes = await wait_outcomes(redis.Redis.from_url(settings.redis_url), engine, work.ids)
        recovery = time.monotonic() - killed_at
    finally:
        stop(killed.process, *([survivor.process] if survivor else []))
    assert {o.status for o in outcomes.values()} == {"processed"}
    await assert_stored_exactly_once(engine, work)
    measure(accepted=len(work.ids), recovery_after_kill_s=round(recovery, 2))
    # Most of it is the new worker's start-up (a few seconds here); no timeout is waited for.
    assert recovery < 20, f"the killed worker's events took {recovery:.0f} s to come back"
