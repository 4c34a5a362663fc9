"""Redis bytes per event: while queued, once committed (steady state), and per waiting caller.

`.venv/bin/python -m bench.redis_bytes --events 4000` queues events the way the API does
(markers and Celery messages in one `RedisWriter` call: page views 32 to a message, leads one
each; a mix of 80 % anonymous page views, 15 % with a person, 5 % with a person and a
company), measures Redis, runs a real worker over them, and measures again once every event is
committed and the worker stopped (its connections' buffers are not the events' cost). Then the
same for events whose caller waits (`notify`). Figures: the `used_memory` delta per event, and
`MEMORY USAGE` of each structure the events leave behind.

Last, what a notice on the outcome channel costs an API process that has nobody waiting for
it (the case of most events if every outcome were announced): the CPU time of an
`OutcomeWaiter` hearing N notices, in this process.
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from sqlalchemy import text

from bench import procs
from bench.stack import drop_database, flush_redis
from ingest_api.waiter import OutcomeWaiter
from ops import processes
from ops.local_services import start_services
from ops.processes import REPO
from shared.broker.writers import RedisWriter
from shared.contract.events import EventIn
from shared.contract.outcomes import outcome_channel
from shared.contract.queues import Envelope, queue_for
from shared.db.engine import create_engine, migrate_database
from shared.db.tenants import ensure_tenant
from shared.settings import Settings

_STREAM = "ls:outcomes:stream"


def _payload(n: int, run: str) -> dict[str, Any]:
    page = {"pageUrl": f"https://example.com/listings/{n % 500}", "pageTitle": "Listing"}
    if n % 20 == 0:  # 5 %: a lead naming a person and a company
        return {
            "type": "form_submission",
            "person": {"emails": [f"p{n}-{run}@example.com"], "firstName": "Pat"},
            "company": {"name": f"Company {n} {run}"},
            **page,
        }
    if n % 20 < 4:  # 15 %: a lead naming a person
        return {"type": "inquiry", "person": {"emails": [f"p{n}-{run}@example.com"]}, **page}
    return {"type": "page_view", "visitorId": f"v-{n}-{run}", **page}


def _envelopes(tenant_id: uuid.UUID, count: int, *, notify: bool) -> list[Envelope]:
    run = uuid.uuid4().hex[:6]
    envelopes = []
    for n in range(count):
        event = EventIn.model_validate(_payload(n, run))
        envelopes.append(
            Envelope(
                id=uuid.uuid4(),
                tenant_id=tenant_id,
                received_at=datetime.now(UTC),
                notify=notify,
                payload=event.model_dump(mode="json", by_alias=True, exclude_none=True),
            )
        )
    return envelopes


async def _queue(settings: Settings, envelopes: list[Envelope]) -> None:
    # No socket timeout: the writer bounds its calls itself (redis-py 8 sets one by default).
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=None)
    writer = RedisWriter(
        client,
        marker_ttl=settings.queued_marker_ttl_seconds,
        key_ttl=settings.idempotency_ttl_seconds,
        max_events_per_message=settings.enqueue_max_events_per_message,
    )
    try:
        views = [e for e in envelopes if queue_for(e.payload["type"]) == "activity"]
        leads = [e for e in envelopes if queue_for(e.payload["type"]) == "leads"]
        for i in range(0, len(views), 32):
            await writer.write({"activity": views[i : i + 32]}, 30)
        for e in leads:
            await writer.write({"leads": [e]}, 30)
    finally:
        await client.aclose()


async def _committed(settings: Settings) -> int:
    engine = create_engine(settings, pool_size=1)
    try:
        async with engine.connect() as conn:
            stored = await conn.execute(
                text("SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM dead_letters)")
            )
            return int(stored.scalar_one())
    finally:
        await engine.dispose()


def _used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def _structures(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Structure -> (how many, MEMORY USAGE bytes in all), for what the events leave."""
    found: dict[str, tuple[int, int]] = {}
    for pattern, name in (("ls:event:*", "ls:event:<id>"), ("ls:idem:*", "ls:idem:*")):
        keys = list(client.scan_iter(match=pattern, count=1000))
        total = sum(int(client.memory_usage(k, samples=0) or 0) for k in keys)
        found[name] = (len(keys), total)
    for name in ("leads", "activity", "unacked", "unacked_index"):
        if client.exists(name):
            found[name] = (1, int(client.memory_usage(name, samples=0) or 0))
    if client.exists(_STREAM):
        found[f"{_STREAM} ({client.xlen(_STREAM)} entries)"] = (
            int(client.xlen(_STREAM)),
            int(client.memory_usage(_STREAM, samples=0) or 0),
        )
    return found


def _report(label: str, events: int, delta: int, client: redis.Redis) -> None:
    print(f"{label}: used_memory +{delta} B for {events} events = {delta / events:.0f} B/event")
    for name, (count, size) in _structures(client).items():
        if count:
            print(f"    {name:38s} {count:6d} x, {size:9d} B = {size / events:7.1f} B/event")


def _phase(
    settings: Settings, env: dict[str, str], tenant_id: uuid.UUID, count: int, *, notify: bool
) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    label = "waited for" if notify else "no waiter"
    try:
        client.flushdb()
        base = _used(client)
        stored_before = asyncio.run(_committed(settings))
        envelopes = _envelopes(tenant_id, count, notify=notify)
        asyncio.run(_queue(settings, envelopes))
        _report(f"[{label}] queued", count, _used(client) - base, client)
        workdir = Path(tempfile.mkdtemp(prefix="leadstream-redis-bytes-"))
        argv = processes.worker_argv(concurrency=2, node=f"bytes-{uuid.uuid4().hex[:6]}@%h")
        worker = procs.spawn("worker", argv, env=env, cwd=REPO, log=workdir / "worker.log")
        try:
            deadline = time.monotonic() + 600
            while asyncio.run(_committed(settings)) - stored_before < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not all committed: see {worker.log}")
                time.sleep(0.5)
            while client.exists("leads", "activity") or client.hlen("unacked"):
                time.sleep(0.2)  # the last outcomes are published, the last message acked
        finally:
            procs.stop(worker)
        _report(f"[{label}] committed", count, _used(client) - base, client)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_bytes", description=__doc__)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--waited", type=int, default=1000, help="events whose caller waits")
    parser.add_argument("--notices", type=int, default=40_000, help="0: skip that phase")
    parser.add_argument("--redis-db", type=int, default=14)
    parser.add_argument("--redis-url", help="a Redis of your own (its db is flushed)")
    args = parser.parse_args(argv)
    services = start_services(
        data_dir=REPO / ".data" / "bench",
        redis_url=args.redis_url,
        database_name=f"leadstream_bench_{uuid.uuid4().hex[:8]}",
        redis_db=args.redis_db,
    )
    try:
        migrate_database(services.database_url)
        settings = Settings(database_url=services.database_url, redis_url=services.redis_url)
        env = {
            **os.environ,
            "LEADSTREAM_DATABASE_URL": services.database_url,
            "LEADSTREAM_REDIS_URL": services.redis_url,
            "LEADSTREAM_LOG_FORMAT": "json",
        }
        tenant_id = asyncio.run(_tenant(settings))
        if args.events:
            _phase(settings, env, tenant_id, args.events, notify=False)
        if args.waited:
            _phase(settings, env, tenant_id, args.waited, notify=True)
        if args.notices:
            asyncio.run(_notice_cost(settings, args.notices))
    finally:
        drop_database(services.database_url)
        flush_redis(services.redis_url)
        services.close()
    return 0


async def _notice_cost(settings: Settings, count: int) -> None:
    channel = outcome_channel(settings.redis_url, settings.deployment_id)
    client = aioredis.Redis.from_url(settings.redis_url)
    engine = create_engine(settings, pool_size=1)
    waiter = OutcomeWaiter(client, engine, channel)
    publisher = redis.Redis.from_url(settings.redis_url)
    tenant = str(uuid.uuid4())
    notices = [
        orjson.dumps(
            {"id": str(uuid.uuid4()), "tenantId": tenant, "status": "processed", "httpStatus": 200}
        )
        for _ in range(count)
    ]
    try:
        waiter.start()
        while publisher.pubsub_numsub(channel)[0][1] == 0:  # noqa: ASYNC110 - Redis signals nothing
            await asyncio.sleep(0.05)
        started = time.process_time()
        published = 0.0
        for i in range(0, count, 200):
            cpu = time.process_time()
            with publisher.pipeline(transaction=False) as pipe:
                for notice in notices[i : i + 200]:
                    pipe.publish(channel, notice)
                pipe.execute()
            published += time.process_time() - cpu
            await asyncio.sleep(0)
        # The listener has heard them all once the channel holds no more for it: a marker last.
        done = asyncio.get_running_loop().create_future()
        marker = uuid.uuid4()
        waiting = waiter.register(marker)
        waiting.add_done_callback(lambda _: done.set_result(None))
        publisher.publish(channel, orjson.dumps({"id": str(marker)}))
        await asyncio.wait_for(done, 120)
        listened = time.process_time() - started - published
        print(
            f"notice cost: {count} notices nobody waits for, {listened / count * 1e6:.1f} µs of"
            " API-process CPU each"
        )
    finally:
        await waiter.stop()
        publisher.close()
        await client.aclose()
        await engine.dispose()


async def _tenant(settings: Settings) -> uuid.UUID:
    engine = create_engine(settings, pool_size=1)
    try:
        async with engine.begin() as conn:
            return await ensure_tenant(conn, name="redis-bytes", default_region="US")
    finally:
        await engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
