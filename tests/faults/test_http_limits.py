"""Hostile HTTP senders against a real API process, as `make run` starts it, with no proxy in front.

Slow or silent sockets are closed within the configured bounds, a huge header is answered 431
without the process holding it, and connections past the cap are closed at once. The timeouts
are set short here (2 s) so the test is quick; the mechanism is the one the defaults use.
"""

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import start_api, stop
from tests.support.tenants import Tenant

pytestmark = pytest.mark.faults

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
MAX_CONNECTIONS = 24
SWEEP = 1.0  # ingest_api/server.py checks deadlines once a second
BODY_GRACE = 1.0  # and gives a body its timeout plus this before closing
MARGIN = 3.0  # a loaded, shared 2-core machine


@dataclass
class Api:
    url: str
    host: str
    port: int
    pid: int


@pytest.fixture(scope="module")
def api(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    env = {
        **service_env,
        "LEADSTREAM_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "LEADSTREAM_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "LEADSTREAM_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    started = start_api(env, tmp_path_factory.mktemp("http-limits") / "api.log")
    host, port = started.url.removeprefix("http://").split(":")
    yield Api(started.url, host, int(port), started.process.pid)
    stop(started.process)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _closed_after(reader: asyncio.StreamReader, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it answered before."""
    started = time.monotonic()
    received = b""
    try:
        async with asyncio.timeout(limit):
            while chunk := await reader.read(65536):
                received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {limit} s; answered {received[:200]!r}") from None
    return time.monotonic() - started, received


async def _held(api: Api, sent: bytes, limit: float) -> tuple[float, bytes]:
    reader, writer = await asyncio.open_connection(api.host, api.port)
    try:
        if sent:
            writer.write(sent)
            await writer.drain()
        return await _closed_after(reader, limit)
    finally:
        writer.close()


async def test_silent_and_slow_senders_are_closed_within_the_bounds(
    api: Api, tenant: Tenant
) -> None:
    head_bound = HEADER_TIMEOUT + SWEEP + MARGIN
    body_bound = BODY_TIMEOUT + BODY_GRACE + SWEEP + MARGIN
    post = b"POST /api/partner/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    token = f"Authorization: Bearer {tenant.token}\r\n".encode()

    async def keep_alive_then_half_head() -> tuple[float, bytes]:
        reader, writer = await asyncio.open_connection(api.host, api.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            answer = await reader.readuntil(b'{"status":"ok"}')
            assert answer.startswith(b"HTTP/1.1 200"), answer
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            await writer.drain()
            return await _closed_after(reader, head_bound + 5)
        finally:
            writer.close()

    cases = {
        "idle, nothing sent": _held(api, b"", head_bound + 5),
        "half a request head": _held(api, post + b"X-Slow: a", head_bound + 5),
        "half a head after a keep-alive request": keep_alive_then_half_head(),
        "anonymous, half a body (401 at once)": _held(
            api, post + b"Content-Length: 1000\r\n\r\n" + b"{" * 10, body_bound + 5
        ),
        "authorized, half a body": _held(
            api, post + token + b"Content-Length: 1000\r\n\r\n" + b"{" * 10, body_bound + 5
        ),
        "authorized, one chunk then silence": _held(
            api,
            post.replace(b"/events ", b"/events/batch ")
            + token
            + b"Transfer-Encoding: chunked\r\n\r\na\r\n{{{{{{{{{{\r\n",
            body_bound + 5,
        ),
    }
    results = dict(zip(cases, await asyncio.gather(*cases.values()), strict=True))
    for name, (seconds, answer) in results.items():
        is_head = "head" in name or "idle" in name
        timeout, bound = (HEADER_TIMEOUT, head_bound) if is_head else (BODY_TIMEOUT, body_bound)
        assert timeout - 0.2 <= seconds <= bound, (name, seconds, answer[:200])
        if name.startswith("authorized"):  # the intake's own answer, before the server's close
            assert answer.startswith(b"HTTP/1.1 408"), (name, answer[:200])
        elif name.startswith("anonymous"):
            assert answer.startswith(b"HTTP/1.1 401"), (name, answer[:200])
        elif "keep-alive" not in name:
            assert answer == b"", (name, answer[:200])


async def test_a_huge_header_is_refused_431_before_the_process_holds_it(api: Api) -> None:
    # A large but legal head (cookies, say) is served.
    reader, writer = await asyncio.open_connection(api.host, api.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 20_000 + b"\r\n\r\n")
    await writer.drain()
    assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
    writer.close()

    # 16 senders of a 2 MB header value that never ends: 32 MB if the server buffered them.
    rss_before = _rss_kb(api.pid)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 << 20)
    answers = await asyncio.gather(*(_held(api, head, 10) for _ in range(16)))
    growth_kb = _rss_kb(api.pid) - rss_before
    for seconds, answer in answers:
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b"application/problem+json" in answer and b"header-too-large" in answer
        assert seconds < 10
    assert growth_kb < 8 * 1024, f"the API grew by {growth_kb} KB"


async def test_connections_past_the_cap_are_closed_at_once_and_service_resumes(
    api: Api,
) -> None:
    await asyncio.sleep(0.5)  # the fixture's own health probes are gone
    idle = [await asyncio.open_connection(api.host, api.port) for _ in range(MAX_CONNECTIONS)]
    try:
        await asyncio.sleep(0.3)
        seconds, answer = await _held(api, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 5)
        assert (answer, seconds < 1) == (b"", True), (seconds, answer[:200])
    finally:
        for _, writer in idle:
            writer.close()
    await asyncio.sleep(0.5)
    reader, writer = await asyncio.open_connection(api.host, api.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
