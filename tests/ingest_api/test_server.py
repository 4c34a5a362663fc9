"""The HTTP protocol's byte and connection limits, fed bytes directly (no socket, no clock).

Timeouts are checked against a real process in tests/faults/test_http_limits.py.
"""

import asyncio
from typing import Any

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from ingest_api import server
from ingest_api.server import GuardedHttpToolsProtocol, Limits

MAX_HEADER_BYTES = 1024
LIMITS = Limits(
    header_timeout=10, body_timeout=11, max_header_bytes=MAX_HEADER_BYTES, max_connections=3
)


class Transport(asyncio.Transport):
    """What the protocol writes, and whether it closed or half-closed the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = self.eof = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body and answers its length."""
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def state(monkeypatch: pytest.MonkeyPatch) -> ServerState:
    monkeypatch.setattr(server, "limits", lambda: LIMITS)
    return ServerState()


def _connect(state: ServerState) -> tuple[GuardedHttpToolsProtocol, Transport]:
    config = Config(app=_app, lifespan="off", http=GuardedHttpToolsProtocol)
    config.load()
    protocol = GuardedHttpToolsProtocol(config=config, server_state=state, app_state={})
    transport = Transport()
    protocol.connection_made(transport)
    return protocol, transport


def _head(size: int, *, body: bytes = b"") -> bytes:
    """A request head of exactly `size` bytes (padded with a header), then `body`."""
    start = b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nX-Pad: " % len(body)
    pad = size - len(start) - 4
    return start + b"p" * pad + b"\r\n\r\n" + body


async def _answered(transport: Transport) -> bytes:
    for _ in range(100):
        if b"\r\n\r\n" in transport.written:
            break
        await asyncio.sleep(0)
    return transport.written


async def test_a_head_at_the_limit_is_served_with_its_body_in_the_same_read(
    state: ServerState,
) -> None:
    protocol, transport = _connect(state)
    protocol.data_received(_head(MAX_HEADER_BYTES, body=b"b" * 5000))
    answer = await _answered(transport)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n\r\n5000"), answer


async def test_a_head_at_the_limit_in_small_reads_is_served(state: ServerState) -> None:
    protocol, transport = _connect(state)
    request = _head(MAX_HEADER_BYTES, body=b"b" * 10)
    for at in range(0, len(request), 7):
        protocol.data_received(request[at : at + 7])
    assert (await _answered(transport)).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("read", [7, 100, 1 << 20])
async def test_a_head_one_byte_over_is_answered_431_and_the_rest_dropped(
    state: ServerState, read: int
) -> None:
    protocol, transport = _connect(state)
    request = _head(MAX_HEADER_BYTES + 1) + b"more" * 100_000
    for at in range(0, len(request), read):
        protocol.data_received(request[at : at + read])
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert b"application/problem+json" in transport.written
    # Half-closed after the answer, not reset: the client reads it even while still sending.
    assert transport.eof and not transport.closed
    assert protocol.deadline is not None  # the sweep closes it after the linger


async def test_keep_alive_requests_each_get_the_whole_header_budget(state: ServerState) -> None:
    protocol, transport = _connect(state)
    two = _head(MAX_HEADER_BYTES - 10, body=b"x") + _head(MAX_HEADER_BYTES - 10, body=b"yy")
    for at in range(0, len(two), 300):
        protocol.data_received(two[at : at + 300])
        await _answered(transport)
    for _ in range(100):
        await asyncio.sleep(0)
    assert transport.written.count(b"HTTP/1.1 200") == 2, transport.written
    assert b"431" not in transport.written


async def test_a_connection_past_the_cap_is_closed_at_once(state: ServerState) -> None:
    opened = [_connect(state) for _ in range(LIMITS.max_connections)]
    assert not any(transport.closed for _, transport in opened)
    _, refused = _connect(state)
    assert refused.closed and refused.written == b""
