"""The snippet in a real browser, end to end: headless Chromium on pages of another origin,
`/track.js` and `/beacon` of the running API, the real worker, rows in PostgreSQL.

The pages are served by a small server of their own (another port, another host name:
`localhost` against the API's `127.0.0.1`), so every beacon is a cross-origin request under
CORS, and under a strict Content-Security-Policy that allows only the API's origin.
"""

import asyncio
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.browser import Page, find_chromium, find_playwright_core, open_page
from tests.support.processes import BIN, WorkerProcess
from tests.support.tenants import Tenant

# A page's own script, as a site would write it: the pre-load queue (the stub), and a record
# of CSP violations, which would otherwise only reach the console.
STUB_JS = """
window.csp = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.csp.push(e.violatedDirective + ' ' + e.blockedURI);
});
window.leadstream = window.leadstream || {q: []};
if (location.pathname === '/fallbacks') {
  // A browser without sendBeacon that blocks cookies.
  Object.defineProperty(navigator, 'sendBeacon', {value: undefined});
  Object.defineProperty(document, 'cookie', {get: function () { return ''; }, set: function () {}});
}
if (location.pathname.indexOf('/listings/') === 0) {
  leadstream.q.push(['track', 'property_view', {property: {id: location.pathname.slice(10)}}]);
}
"""


class Site:
    """Pages on their own origin, each embedding the API's snippet with the site's key."""

    def __init__(self, api_url: str) -> None:
        self.api_url, self.key = api_url, ""
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/stub.js":
                    body, kind = STUB_JS, "text/javascript"
                else:
                    pending = ' data-consent="pending"' if self.path == "/consent" else ""
                    body, kind = (
                        f"<!doctype html><title>Page {self.path}</title>"
                        '<script src="/stub.js"></script>'
                        f'<script src="{site.api_url}/track.js" data-key="{site.key}"{pending}'
                        " async></script><h1>A listing</h1>",
                        "text/html",
                    )
                encoded = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", f"{kind}; charset=utf-8")
                self.send_header("Content-Length", str(len(encoded)))
                self.send_header(
                    "Content-Security-Policy",
                    f"default-src 'none'; script-src 'self' {site.api_url};"
                    f" connect-src {site.api_url}",
                )
                self.end_headers()
                self.wfile.write(encoded)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://localhost:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.origin}{path}"


@pytest.fixture
def site(api_url: str, tenant: Tenant, service_env: dict[str, str]) -> Iterator[Site]:
    made = Site(api_url)
    created = subprocess.run(
        [
            str(BIN / "leadstream"),
            "site",
            "create",
            "--tenant",
            tenant.name,
            "--origin",
            made.origin,
        ],
        env=service_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    made.key = created.stdout.strip().splitlines()[-1]
    thread = threading.Thread(target=made.server.serve_forever, daemon=True)
    thread.start()
    yield made
    made.server.shutdown()
    made.server.server_close()


@pytest.fixture
def page() -> Iterator[Page]:
    with open_page(find_chromium(), find_playwright_core()) as opened:
        yield opened


async def _rows(engine: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(row) for row in (await conn.execute(text(sql), params)).mappings()]


async def _eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.1)


EVENTS = """
SELECT event_type, page_url, visitor_id, person_id, received_at, property FROM events
WHERE tenant_id = :tenant ORDER BY occurred_at
"""


async def test_two_listings_then_identify_make_one_person_with_both_views(
    site: Site, page: Page, tenant: Tenant, engine: AsyncEngine, worker: WorkerProcess
) -> None:
    page.goto(site.url("/listings/101"))
    page.goto(site.url("/listings/102"))
    email = f"ann-{uuid.uuid4().hex[:8]}@example.com"
    page.evaluate(f"leadstream.identify({{email: '{email}', firstName: 'Ann'}})")
    cookies = [c for c in page.cookies() if c["name"] == "ls_vid"]
    assert len(cookies) == 1 and cookies[0]["sameSite"] == "Lax"
    # A year, renewed on each page.
    assert 364 * 86400 < cookies[0]["expires"] - time.time() <= 365 * 86400
    visitor = cookies[0]["value"]

    async def stitched() -> bool:
        rows = await _rows(engine, EVENTS, tenant=tenant.id)
        # page_leave is sent only after half a second visible: the test does not wait for it.
        seen = [r for r in rows if r["event_type"] != "page_leave"]
        return len(seen) == 5 and all(r["person_id"] is not None for r in seen)

    await _eventually(stitched, "both listings' views attached to the identified person")
    people = await _rows(
        engine,
        "SELECT p.id, p.first_name, e.value AS email FROM people p"
        " JOIN person_emails e ON e.person_id = p.id WHERE p.tenant_id = :tenant",
        tenant=tenant.id,
    )
    assert [(p["first_name"], p["email"]) for p in people] == [("Ann", email)]
    rows = await _rows(engine, EVENTS, tenant=tenant.id)
    views = [(r["event_type"], r["page_url"]) for r in rows if r["event_type"] != "page_leave"]
    assert views == [
        ("page_view", site.url("/listings/101")),
        ("property_view", site.url("/listings/101")),
        ("page_view", site.url("/listings/102")),
        ("property_view", site.url("/listings/102")),
        ("identify", site.url("/listings/102")),
    ]
    assert {r["person_id"] for r in rows} == {people[0]["id"]}
    assert {r["visitor_id"] for r in rows} == {visitor}
    # The queued call, made by the page before the snippet loaded, was sent once it had.
    assert [r["property"] for r in rows if r["event_type"] == "property_view"] == [
        {"id": "101"},
        {"id": "102"},
    ]
    assert page.evaluate("window.csp") == []
    assert {r["type"] for r in page.requests() if r["method"] == "POST"} == {"ping"}
    assert page.errors() == []


async def test_with_consent_pending_nothing_is_stored_until_consent(
    site: Site, page: Page, tenant: Tenant, engine: AsyncEngine, worker: WorkerProcess
) -> None:
    page.goto(site.url("/consent"))
    page.evaluate("leadstream.track('search', {propertySearch: {beds: 3}})")
    # A navigation is a barrier: a beacon sent before it is recorded before its request.
    page.goto(site.url("/consent"))
    assert [c for c in page.cookies() if c["name"] == "ls_vid"] == []
    assert page.evaluate("localStorage.length") == 0
    beacons = [r for r in page.requests() if r["method"] == "POST"]
    assert beacons == [], "the snippet sent events before consent"
    assert await _rows(engine, EVENTS, tenant=tenant.id) == []

    consented_at = datetime.now(UTC)
    page.evaluate("leadstream.track('search', {propertySearch: {beds: 4}})")
    page.evaluate("leadstream.consent(true)")
    visitor = page.evaluate("document.cookie.split('ls_vid=')[1]")
    assert visitor

    async def arrived() -> bool:
        return len(await _rows(engine, EVENTS, tenant=tenant.id)) >= 2

    await _eventually(arrived, "the events held until consent")
    rows = await _rows(engine, EVENTS, tenant=tenant.id)
    # This page's view and the search made while pending, nothing from before the barrier.
    assert [r["event_type"] for r in rows] == ["page_view", "search"]
    assert {r["visitor_id"] for r in rows} == {visitor}
    assert all(r["received_at"] >= consented_at for r in rows)

    page.evaluate("leadstream.consent(false)")
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("localStorage.length") == 0
    sent = len([r for r in page.requests() if r["method"] == "POST"])
    page.evaluate("leadstream.track('search', {propertySearch: {beds: 5}})")
    page.goto(site.url("/consent"))
    assert len([r for r in page.requests() if r["method"] == "POST"]) == sent
    assert page.errors() == []


async def test_without_sendbeacon_or_cookies_it_uses_keepalive_fetch_and_localstorage(
    site: Site, page: Page, tenant: Tenant, engine: AsyncEngine, worker: WorkerProcess
) -> None:
    page.goto(site.url("/fallbacks"))
    visitor = page.evaluate("localStorage.getItem('ls_vid')")
    assert visitor
    assert [c for c in page.cookies() if c["name"] == "ls_vid"] == []

    async def arrived() -> bool:
        return bool(await _rows(engine, EVENTS, tenant=tenant.id))

    await _eventually(arrived, "the page view sent with fetch")
    rows = await _rows(engine, EVENTS, tenant=tenant.id)
    assert [(r["event_type"], r["visitor_id"]) for r in rows] == [("page_view", visitor)]
    assert [r["type"] for r in page.requests() if r["method"] == "POST"] == ["fetch"]
    assert page.errors() == []
