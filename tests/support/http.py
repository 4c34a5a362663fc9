"""Waiting on the API for outcomes (no sleeps standing in for waiting)."""

import asyncio
import re

import httpx


async def wait_for_outcome(
    http: httpx.AsyncClient, event_id: str, timeout: float = 30
) -> httpx.Response:
    """Poll GET /events/{id} until it is no longer queued (no sleeps standing in for waiting)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        response = await http.get(f"/api/partner/events/{event_id}")
        if response.status_code != 202:
            return response
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"event {event_id} still queued after {timeout}s")
        await asyncio.sleep(0.05)


async def accepted_count(http: httpx.AsyncClient) -> float:
    """Events the API process has queued, from its own Prometheus counter."""
    text = (await http.get("/metrics")).text
    return sum(
        float(m.group(1))
        for m in re.finditer(r"^leadstream_events_accepted_total\{[^}]*\} (\S+)$", text, re.M)
    )
