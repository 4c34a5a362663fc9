"""HTTP bodies for the plain-ASGI routes: content type, limits, gzip, `Prefer`, the raw 202."""

import asyncio
import re
import zlib

from ingest_api.asgi import Receive, Send
from ingest_api.problems import ProblemError

JSON = b"application/json"
# At most 6 digits: int() of thousands of them is slow, then refused (Python's 4300-digit cap).
_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,6})(?!\d)", re.IGNORECASE)


class DisconnectedError(Exception):
    """The client went away before its body arrived: nothing to answer."""


def wait_seconds(prefer: bytes | None, limit: int) -> int | None:
    """`Prefer: wait=N`'s N, capped at `limit`; None without one."""
    match = _WAIT.search(prefer.decode("latin-1")) if prefer else None
    return min(int(match.group(1)), limit) if match else None


def check_content_type(headers: dict[bytes, bytes]) -> None:
    content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    if content_type != JSON and not content_type.endswith(b"+json"):
        raise ProblemError(
            415,
            "Unsupported media type",
            "send the event as application/json",
            kind="unsupported-media-type",
        )


def _too_large(limit: int) -> ProblemError:
    return ProblemError(
        413, "Payload too large", f"the body exceeds {limit} bytes", kind="payload-too-large"
    )


async def read_body(
    headers: dict[bytes, bytes], receive: Receive, limit: int, timeout: float
) -> bytes:
    """The whole body, refused (413) as soon as it passes `limit`, declared or streamed, and
    (408) if it has not all arrived within `timeout` seconds: a slow sender holds no request."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []  # joined once: `body += chunk` copies it all at every chunk
    size = 0
    more = True
    try:
        async with asyncio.timeout(timeout):
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise DisconnectedError
                chunk = message.get("body", b"")
                chunks.append(chunk)
                size += len(chunk)
                more = message.get("more_body", False)
                if size > limit:
                    raise _too_large(limit)
    except TimeoutError:
        raise ProblemError(
            408,
            "Request timeout",
            f"the body did not arrive within {timeout:g} s",
            kind="request-timeout",
            headers={"Connection": "close"},
        ) from None
    return b"".join(chunks)


def gunzip(headers: dict[bytes, bytes], body: bytes, limit: int) -> bytes:
    """The body, gzip-decoded if so encoded; 413 as soon as it decodes past `limit`; 400 for a
    stream that is cut short or followed by anything (a second member included): silently
    dropping what follows the first member could drop events."""
    encoding = headers.get(b"content-encoding", b"identity").strip().lower()
    if encoding == b"identity":
        return body
    if encoding != b"gzip":
        raise ProblemError(
            415,
            "Unsupported media type",
            "Content-Encoding may be gzip or identity",
            kind="unsupported-media-type",
        )
    decoder = zlib.decompressobj(wbits=31)
    try:
        decoded = decoder.decompress(body, limit + 1)
    except zlib.error:
        raise _malformed_gzip("the body is not valid gzip") from None
    if len(decoded) > limit:
        raise _too_large(limit)
    if not decoder.eof:
        raise _malformed_gzip("the gzip stream is truncated: it ends before its end marker")
    if decoder.unused_data:
        raise _malformed_gzip("bytes follow the gzip stream: send one gzip member, nothing after")
    return decoded


def _malformed_gzip(detail: str) -> ProblemError:
    return ProblemError(400, "Malformed body", detail, kind="malformed-body")


async def send_accepted(send: Send, body: bytes, extra: dict[str, str]) -> None:
    """202 with a JSON body, written as raw ASGI messages: a Response object costs more."""
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", JSON),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in extra.items()),
    ]
    await send({"type": "http.response.start", "status": 202, "headers": headers})
    await send({"type": "http.response.body", "body": body})
