"""Bots and clients' clocks, end to end (the API, the real worker, PostgreSQL, read back through
the API): a crawler's event is stored and marked, and left out of a timeline only when asked; a
clock hours off is corrected, one claiming the far future is clamped, and both keep what the
client sent. The rules themselves: tests/worker/matching/test_clock.py and test_bots.py."""

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.tables import events_t
from tests.support.processes import WorkerProcess

EVENTS = "/api/partner/events"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


async def _stored(client: httpx.AsyncClient, event: dict[str, Any]) -> dict[str, Any]:
    """The event's body in its outcome, once the worker has stored it."""
    response = await client.post(EVENTS, headers={"Prefer": "wait=10"}, json=event)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()["event"]
    return body


async def _bots_logged(worker: WorkerProcess, event_id: str, timeout: float = 10) -> int:
    """`bots` of the worker's batch.processed record for the message this event came in (it
    is written just after the outcome is published: polled, bounded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for line in worker.log.read_text(errors="replace").splitlines():
            if '"batch.processed"' in line and event_id in line:
                record = json.loads(line[line.find("{") :])
                return int(record["bots"])
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no batch.processed record for {event_id} after {timeout}s")
        await asyncio.sleep(0.05)


async def test_bots_are_marked_and_clocks_corrected_or_clamped(
    client: httpx.AsyncClient, engine: AsyncEngine, worker: WorkerProcess
) -> None:
    lead = await client.post(
        EVENTS,
        headers={"Prefer": "wait=10"},
        json={"type": "form_submission", "person": {"emails": [f"{uuid.uuid4().hex}@example.com"]}},
    )
    assert lead.status_code == 201, lead.text
    person_id = lead.json()["person"]["id"]
    view = {"type": "page_view", "personId": person_id}

    crawled = await _stored(client, {**view, "userAgent": GOOGLEBOT})
    assert crawled["bot"] is True
    assert await _bots_logged(worker, crawled["id"]) == 1

    # The client's clock is 2 hours behind the server's; its event happened a minute before it
    # was sent.
    sent = datetime.now(UTC) - timedelta(hours=2)
    behind = await _stored(
        client,
        {
            **view,
            "occurredAt": (sent - timedelta(minutes=1)).isoformat(),
            "sentAt": sent.isoformat(),
        },
    )
    assert "bot" not in behind and behind["clockAdjustment"] == "corrected"
    assert datetime.fromisoformat(behind["clientOccurredAt"]) == sent - timedelta(minutes=1)
    assert datetime.fromisoformat(behind["sentAt"]) == sent

    ahead = datetime.now(UTC) + timedelta(days=3)
    future = await _stored(client, {**view, "occurredAt": ahead.isoformat()})
    assert future["clockAdjustment"] == "clamped" and "sentAt" not in future
    assert datetime.fromisoformat(future["clientOccurredAt"]) == ahead

    async with engine.connect() as conn:
        rows = {
            str(row.id): row
            for row in await conn.execute(
                select(events_t).where(events_t.c.person_id == uuid.UUID(person_id))
            )
        }
    assert {i: r.bot for i, r in rows.items()} == {
        lead.json()["event"]["id"]: False,
        crawled["id"]: True,
        behind["id"]: False,
        future["id"]: False,
    }
    corrected = rows[behind["id"]]
    # Shifted by the offset, received - sentAt: a minute before the server received it.
    assert corrected.occurred_at == corrected.received_at - timedelta(minutes=1)
    assert (corrected.client_occurred_at, corrected.sent_at) == (sent - timedelta(minutes=1), sent)
    clamped = rows[future["id"]]
    assert clamped.occurred_at == clamped.received_at and clamped.client_occurred_at == ahead
    assert (clamped.sent_at, clamped.clock_adjustment) == (None, "clamped")
    assert rows[crawled["id"]].clock_adjustment is None

    async def timeline(**params: str) -> list[dict[str, Any]]:
        page = await client.get(EVENTS, params={"personId": person_id, **params})
        assert page.status_code == 200, page.text
        events: list[dict[str, Any]] = page.json()["events"]
        return events

    everything = await timeline()
    # The timeline shows each event as its outcome did, flags and the client's times included.
    assert {e["id"]: e for e in everything} == {
        lead.json()["event"]["id"]: lead.json()["event"],
        **{e["id"]: e for e in (crawled, behind, future)},
    }
    without_bots = await timeline(excludeBots="true")
    assert without_bots == [e for e in everything if e["id"] != crawled["id"]]
    assert await timeline(excludeBots="false") == everything
