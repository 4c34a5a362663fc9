"""PostgreSQL bytes per stored event, by table (heap, indexes and TOAST), for README's sizing.

`.venv/bin/python -m bench.pg_bytes --events 20000` stores events through the worker's own
transaction (`commit_batch`, 200 to a message, as the worker takes them) into a scratch
database: first anonymous page views as the browser doors fill them (URL, title, referrer,
User-Agent, truncated address), then leads naming a new person with an e-mail and a phone.
Each kind's figure is the growth of every table's `pg_total_relation_size` divided by the
events stored.
"""

import argparse
import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.stack import drop_database
from ops.local_services import ensure_database, start_services
from ops.processes import REPO
from shared.contract.events import EventIn
from shared.contract.queues import Envelope
from shared.db.engine import create_engine, migrate_database
from shared.db.tenants import ensure_tenant
from shared.ids import new_id
from shared.settings import Settings
from worker.unit_of_work import commit_batch

MESSAGE = 200
AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/131.0.0.0 Safari/537.36"
)


def page_view(n: int, run: str) -> dict[str, Any]:
    return {
        "type": "page_view",
        "visitorId": f"v-{n}-{run}",
        "pageUrl": f"https://agent.example/listings/{n % 500}?utm_source=portal",
        "pageTitle": "3 bed, 2 bath in Springfield",
        "pageReferrer": "https://www.google.com/",
        "userAgent": AGENT,
        "ipAddress": f"203.0.{n % 250}.0",
    }


def lead(n: int, run: str) -> dict[str, Any]:
    return {
        "type": "inquiry",
        "visitorId": f"v-{n}-{run}",
        "person": {
            "firstName": "Pat",
            "lastName": f"Lee {n}",
            "emails": [f"pat{n}-{run}@example.com"],
            "phones": [f"+1503555{n % 10_000:04d}"],
        },
        "message": "Is it still available? I'd like to see it this weekend.",
        "pageUrl": f"https://agent.example/listings/{n % 500}",
        "userAgent": AGENT,
    }


async def _sizes(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        await conn.execute(text("CHECKPOINT"))
        rows = await conn.execute(
            text(
                "SELECT relname, pg_total_relation_size(relid) FROM pg_stat_user_tables"
                " WHERE schemaname = 'public'"
            )
        )
        return dict(rows.tuples().all())


async def _store(engine: AsyncEngine, tenant_id: uuid.UUID, payloads: list[dict[str, Any]]) -> None:
    now = datetime.now(UTC)
    for start in range(0, len(payloads), MESSAGE):
        envelopes = [
            Envelope(
                id=new_id(),
                tenant_id=tenant_id,
                received_at=now,
                payload=EventIn.model_validate(p).model_dump(
                    mode="json", by_alias=True, exclude_none=True
                ),
            )
            for p in payloads[start : start + MESSAGE]
        ]
        await commit_batch(engine, envelopes)


async def measure(database_url: str, events: int) -> dict[str, dict[str, float]]:
    engine = create_engine(Settings(database_url=database_url))
    run = uuid.uuid4().hex[:6]
    try:
        async with engine.begin() as conn:
            tenant_id = await ensure_tenant(conn, name=f"bench-{run}", default_region="US")
        figures: dict[str, dict[str, float]] = {}
        for kind, make in (("page view", page_view), ("lead", lead)):
            before = await _sizes(engine)
            await _store(engine, tenant_id, [make(n, run) for n in range(events)])
            after = await _sizes(engine)
            grown = {t: (after[t] - before.get(t, 0)) / events for t in after}
            figures[kind] = {t: b for t, b in grown.items() if b > 0}
        return figures
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    services = start_services(
        data_dir=REPO / ".data" / "bench",
        database_name=f"leadstream_pgbytes_{uuid.uuid4().hex[:8]}",
    )
    try:
        asyncio.run(ensure_database(services.database_url))
        migrate_database(services.database_url)
        figures = asyncio.run(measure(services.database_url, args.events))
    finally:
        drop_database(services.database_url)
        services.close()
    for kind, tables in figures.items():
        total = sum(tables.values())
        parts = ", ".join(f"{t} {b:,.0f}" for t, b in sorted(tables.items(), key=lambda x: -x[1]))
        print(f"{kind}: {total:,.0f} B per event ({parts})")


if __name__ == "__main__":
    main()
