"""References (c) and (d): what Redis and PostgreSQL take on this box with nothing in between."""

import asyncio
import time
import uuid
from typing import Any

import asyncpg
import orjson
import redis

# ~1 KB, the size of a Celery message carrying one page view.
_MESSAGE = orjson.dumps({"body": "x" * 900, "headers": {"task": "leadstream.process_events"}})


def redis_lpush(redis_url: str, messages: int, *, pipeline: int = 100) -> float:
    """LPUSH of ~1 KB messages, pipelined by `pipeline` with redis-py: messages per second."""
    client = redis.Redis.from_url(redis_url)
    key = f"bench:lpush:{uuid.uuid4().hex}"
    try:
        started = time.perf_counter()
        for start in range(0, messages, pipeline):
            pipe = client.pipeline(transaction=False)
            for _ in range(min(pipeline, messages - start)):
                pipe.lpush(key, _MESSAGE)
            pipe.execute()
        elapsed = time.perf_counter() - started
        return messages / elapsed
    finally:
        client.delete(key)
        client.close()


def _page_view_row(i: int) -> tuple[Any, ...]:
    payload = orjson.dumps(
        {
            "type": "page_view",
            "visitorId": f"v-{i}",
            "pageUrl": f"https://example.com/l/{i}",
            "pageTitle": "3 bed, 2 bath in Springfield",
            "source": "bench-copy",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) bench" * 4,
        }
    ).decode()
    return (uuid.uuid4(), uuid.uuid4(), "page_view", payload)


async def pg_copy(connect: dict[str, Any], rows: int) -> float:
    """asyncpg copy_records_to_table into a scratch table: rows per second."""
    records = [_page_view_row(i) for i in range(rows)]
    conn = await asyncpg.connect(**connect)
    try:
        await conn.execute(
            "CREATE TABLE bench_copy (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, "
            "event_type text NOT NULL, payload jsonb NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now())"
        )
        started = time.perf_counter()
        # Batches of 10,000 each in their own transaction, like a worker committing batches.
        for start in range(0, rows, 10_000):
            await conn.copy_records_to_table(
                "bench_copy",
                records=records[start : start + 10_000],
                columns=["id", "tenant_id", "event_type", "payload"],
            )
        elapsed = time.perf_counter() - started
        return rows / elapsed
    finally:
        await conn.execute("DROP TABLE IF EXISTS bench_copy")
        await conn.close()


def pg_copy_sync(connect: dict[str, Any], rows: int) -> float:
    return asyncio.run(pg_copy(connect, rows))
