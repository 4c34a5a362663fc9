"""What one queue message costs the worker, without Celery or competing processes.

`.venv/bin/python -m bench.batch_cost` runs `commit_batch` + `publish_outcomes` in-process on
batches of 1, 2, 25 and 200 page views and prints the median wall time, this process's CPU time
(wall time also counts PostgreSQL and Redis, which run on the same cores), the SQL statements
and the socket writes to PostgreSQL (about one per round trip) per batch. Compare its fixed cost
with the bench's per-message fit to see how much the rest (Celery, CPU contention) adds.
"""

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from asyncio import selector_events
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import event

from bench.stack import drop_database, flush_redis
from ops.local_services import start_services
from ops.processes import REPO
from shared.contract.events import EventIn
from shared.contract.queues import Envelope
from shared.db.engine import create_engine, migrate_database
from shared.db.tenants import ensure_tenant
from shared.settings import Settings

_sends = [0]
_transport: Any = selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
_write = _transport.write


def _counting_write(self: Any, data: Any) -> None:
    # Counts asyncpg's sends: about one per round trip to PostgreSQL (this process talks to
    # nothing else over asyncio).
    _sends[0] += 1
    _write(self, data)


def _envelope(tenant_id: uuid.UUID, visitor: str) -> Envelope:
    event_in = EventIn.model_validate(
        {
            "type": "page_view",
            "visitorId": visitor,
            "pageUrl": "https://example.com/l/1",
            "source": "bench-batch-cost",
        }
    )
    return Envelope(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        received_at=datetime.now(UTC),
        payload=event_in.model_dump(mode="json", by_alias=True, exclude_none=True),
    )


async def measure(settings: Settings, sizes: list[int], repeats: int) -> list[str]:
    from worker.unit_of_work import commit_batch, publish_outcomes

    engine = create_engine(settings, pool_size=2)
    statements = 0

    def count(*_: Any, **__: Any) -> None:
        nonlocal statements
        statements += 1

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    client = redis.Redis.from_url(settings.redis_url)
    lines = []
    try:
        async with engine.begin() as conn:
            tenant_id = await ensure_tenant(conn, name="batch-cost", default_region="US")
        for size in sizes:
            commit_ms, publish_ms, cpu_ms, stmts, sends = [], [], [], [], []
            for rep in range(repeats + 2):  # the first two warm caches and prepared statements
                envelopes = [_envelope(tenant_id, f"v-{size}-{rep}-{i}") for i in range(size)]
                statements, _sends[0] = 0, 0
                started, cpu_started = time.perf_counter(), time.process_time()
                result = await commit_batch(engine, envelopes)
                committed = time.perf_counter()
                publish_outcomes(client, envelopes, result.outcomes, settings)
                published, cpu_done = time.perf_counter(), time.process_time()
                if result.failed_events:
                    raise RuntimeError(f"{result.failed_events} events failed: see the log")
                if rep >= 2:
                    commit_ms.append(1000 * (committed - started))
                    publish_ms.append(1000 * (published - committed))
                    cpu_ms.append(1000 * (cpu_done - cpu_started))
                    stmts.append(statements)
                    sends.append(_sends[0])
            lines.append(
                f"batch of {size:4d}: commit_batch {statistics.median(commit_ms):6.1f} ms, "
                f"publish_outcomes {statistics.median(publish_ms):5.1f} ms (medians of "
                f"{repeats}), worker CPU {statistics.median(cpu_ms):5.1f} ms; "
                f"{statistics.median(stmts):.0f} SQL statements, "
                f"{statistics.median(sends):.0f} socket writes to PostgreSQL"
            )
    finally:
        client.close()
        await engine.dispose()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_cost", description=__doc__)
    parser.add_argument("--sizes", default="1,2,25,200")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--redis-db", type=int, default=14)
    args = parser.parse_args(argv)
    _transport.write = _counting_write
    services = start_services(
        data_dir=REPO / ".data" / "bench",
        database_name=f"leadstream_bench_{uuid.uuid4().hex[:8]}",
        redis_db=args.redis_db,
    )
    try:
        flush_redis(services.redis_url)
        migrate_database(services.database_url)
        settings = Settings(database_url=services.database_url, redis_url=services.redis_url)
        sizes = [int(s) for s in args.sizes.split(",")]
        for line in asyncio.run(measure(settings, sizes, args.repeats)):
            print(line)
    finally:
        drop_database(services.database_url)
        flush_redis(services.redis_url)
        services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
