"""The HTTP protocol the API is served with: uvicorn's httptools protocol plus the limits it lacks.

Uvicorn's `HttpToolsProtocol` (0.55, read in its source) arms no timer on a new connection,
cancels its keep-alive timer on the first byte received, and lets httptools accumulate a header
of any size; its `--limit-concurrency` answers 503 to every request, established clients' too,
while the process holds that many connections, yet accepts more. So, without a proxy in front, one
sender could hold sockets forever, half-send a request head, or send a 200 MB header. This class,
served as `uvicorn --http ingest_api.server:GuardedHttpToolsProtocol`, adds per process:

- a request head must be whole `header_timeout_seconds` after its connection opened or its first
  byte arrived, and a body `body_timeout_seconds` (+1 s) after its head, or the connection is
  closed; the intake answers 408 itself at `body_timeout_seconds` for the bodies it reads;
- a request head over `max_header_bytes` is answered 431 before httptools holds more of it;
- beyond `max_connections` open connections, a new one is closed at once.

Deadlines are checked by one sweep a second over the process's connections, not by a timer per
request: the hot path only stores a float per phase.
"""

import asyncio
import weakref
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
from prometheus_client import Counter
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from shared.contract.problems import MEDIA_TYPE, problem_body
from shared.settings import get_settings

SWEEP_SECONDS = 1.0
BODY_GRACE_SECONDS = 1.0  # the intake's own 408 comes first
LINGER_SECONDS = 2.0  # after a 431, read and drop what is in flight so the client sees the answer

CLOSED = Counter(
    "leadstream_http_connections_closed_total",
    "Connections the server closed to protect itself",
    ["reason"],
)
_CLOSED_HEAD, _CLOSED_BODY, _REFUSED, _TOO_LARGE = (
    CLOSED.labels(reason)
    for reason in ("header_timeout", "body_timeout", "max_connections", "header_too_large")
)


@dataclass(frozen=True)
class Limits:
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_connections: int


@cache
def limits() -> Limits:
    settings = get_settings()
    return Limits(
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds + BODY_GRACE_SECONDS,
        max_header_bytes=settings.max_header_bytes,
        max_connections=settings.max_connections,
    )


def _too_large_response(limit: int) -> bytes:
    body = orjson.dumps(
        problem_body(
            431,
            "Request header fields too large",
            f"the request line and headers exceed {limit} bytes",
            kind="header-too-large",
        )
    )
    return b"".join(
        [
            STATUS_LINE[431],
            b"content-type: " + MEDIA_TYPE.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


# The servers (one ServerState each, shared by their connections) whose sweep is running.
_swept: "weakref.WeakSet[ServerState]" = weakref.WeakSet()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """One connection: uvicorn's protocol, with a deadline per phase and a budget for the head."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits()
        # When the sweep closes this connection (None: the app, or keep-alive, bounds it).
        self.deadline: float | None = None
        # Bytes the request head being read may still take; None once its headers are complete.
        self.head_left: int | None = self.limits.max_header_bytes
        self.lingering = False
        if server_state not in _swept:
            _swept.add(server_state)
            self.loop.call_later(SWEEP_SECONDS, _sweep, self.loop, server_state)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            _REFUSED.inc()
            transport.close()
            return
        self.deadline = self.loop.time() + self.limits.header_timeout

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        left = self.head_left
        if left is None:
            super().data_received(data)
        elif len(data) <= left:
            self.head_left = left - len(data)  # before parsing: the callbacks may reset it
            super().data_received(data)
        else:
            self._head_overflow(data, left)

    def _head_overflow(self, data: bytes, left: int) -> None:
        """Parse only what the head may still take; if it does not end there, answer 431."""
        self.head_left = 0
        if left:
            super().data_received(data[:left])
        if self.transport.is_closing():
            return
        if self.head_left == 0:  # still the same head, and it is full
            self._refuse_head()
        else:  # the head ended: the rest is its body, or the next request
            self.data_received(data[left:])

    def _refuse_head(self) -> None:
        _TOO_LARGE.inc()
        self.transport.write(_too_large_response(self.limits.max_header_bytes))
        # Closing now would reset the connection under a client still sending its header, and
        # the reset can destroy the answer before it is read: half-close, drop input a while.
        self.lingering = True
        self.head_left = None
        self.deadline = self.loop.time() + LINGER_SECONDS
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.deadline is None:  # a request after keep-alive: its head is timed from here
            self.deadline = self.loop.time() + self.limits.header_timeout

    def on_headers_complete(self) -> None:
        self.head_left = None
        self.deadline = self.loop.time() + self.limits.body_timeout
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.head_left = self.limits.max_header_bytes
        # Answered before its body ended (a 401, say): the keep-alive timer uvicorn armed then
        # was cancelled by the body's bytes, so the idle wait for the next request is ours.
        answered = self.cycle is not None and self.cycle.response_complete
        self.deadline = self.loop.time() + self.limits.header_timeout if answered else None
        super().on_message_complete()

    def expire(self) -> None:
        """The deadline passed: a head or body that did not arrive in time, or a lingering 431."""
        if not self.lingering:
            (_CLOSED_BODY if self.head_left is None else _CLOSED_HEAD).inc()
        self.deadline = None
        self.transport.close()


def _sweep(loop: asyncio.AbstractEventLoop, state: ServerState) -> None:
    now = loop.time()
    for connection in list(state.connections):
        if isinstance(connection, GuardedHttpToolsProtocol):
            deadline = connection.deadline
            if deadline is not None and now >= deadline:
                connection.expire()
    loop.call_later(SWEEP_SECONDS, _sweep, loop, state)
