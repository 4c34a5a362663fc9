"""`GET /track.js` in-process: what it serves, how it is cached, how small it stays.

What the snippet does in a browser is tested in a real one: test_snippet_browser.py.
"""

import gzip
import re
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from ingest_api.app import create_app
from ingest_api.sources.snippet import SNIPPET
from shared.settings import Settings

# The bound README states for the gzipped snippet (measured there); it is loaded on every page.
GZIPPED_BOUND = 2500


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # Nothing listens on these ports: serving the file needs neither Redis nor PostgreSQL.
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{_closed_port()}/0",
        database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{_closed_port()}/none",
        log_format="json",
    )
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


async def test_it_is_served_as_javascript_and_cacheable(http: httpx.AsyncClient) -> None:
    response = await http.get("/track.js", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "content-encoding" not in response.headers
    assert response.content == SNIPPET
    assert response.headers["cache-control"] == "public, max-age=3600"
    assert re.fullmatch(r'"[0-9a-f]{20}"', response.headers["etag"])
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_a_conditional_get_answers_304_without_a_body(http: httpx.AsyncClient) -> None:
    etag = (await http.get("/track.js")).headers["etag"]
    for header in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        again = await http.get("/track.js", headers={"If-None-Match": header})
        assert again.status_code == 304, header
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert again.headers["cache-control"] == "public, max-age=3600"
    changed = await http.get("/track.js", headers={"If-None-Match": '"an-older-snippet"'})
    assert changed.status_code == 200
    assert changed.content == SNIPPET


async def test_it_is_gzipped_for_browsers_and_stays_small(http: httpx.AsyncClient) -> None:
    response = await http.get("/track.js", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.headers["vary"] == "Accept-Encoding"
    wire = int(response.headers["content-length"])
    assert response.content == SNIPPET  # httpx decoded it
    assert wire == len(gzip.compress(SNIPPET, compresslevel=9, mtime=0))
    assert wire < GZIPPED_BOUND, f"{wire} bytes gzipped: README promises under {GZIPPED_BOUND}"
    refused = await http.get("/track.js", headers={"Accept-Encoding": "gzip;q=0, br"})
    assert "content-encoding" not in refused.headers
    assert refused.content == SNIPPET


def test_it_needs_nothing_a_strict_csp_forbids() -> None:
    # The browser test runs it under such a CSP; this names the culprit when someone adds one.
    source = SNIPPET.decode()
    for forbidden in ("eval(", "Function(", "setTimeout(", "setInterval(", "innerHTML", ".write("):
        assert forbidden not in source, forbidden
    assert not re.search(r"setAttribute\(\s*['\"]on", source)  # inline handlers
    assert "import " not in source and "require(" not in source  # dependency-free
