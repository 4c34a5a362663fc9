"""`POST /v1/batch` (and `/v1/track`, `/v1/identify`, ...): Segment's HTTP Tracking API, which
`segment-analytics-python` and `rudder-sdk-python` speak, so an app switches by changing its
host and write key (a site key, `leadstream site create`).

The key is read from `Authorization: Basic base64(key:)`, `Bearer <key>`, `?writeKey=` or the
body's `writeKey`; an unknown one is a 401. A gzip body is decoded by its magic bytes, whatever
Content-Encoding says (within `BODY_LIMIT` after decoding). Each message is mapped
(`ingest_api.sources.segment_mapping`) and validated on its own: one that cannot be an event is
skipped and counted, and the request still answers 200 `{}` (rudder-sdk-python takes any other
status, 202 included, as a failure and retries forever).

An event's id is derived from its tenant and its `messageId` (and its timestamp, the id's time
part), so a batch a client resends names the same events, and the worker, which never inserts
an id twice, stores them once.
"""

import base64
import binascii
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog
from prometheus_client import Counter

from ingest_api.asgi import Receive, Scope, Send
from ingest_api.handoff import (
    BATCH_BODY_LIMIT,
    BATCH_MAX_EVENTS,
    parse_json,
    plan_events,
    queue_planned,
)
from ingest_api.http_body import JSON, gunzip, read_body
from ingest_api.problems import ProblemError, unavailable_to_check
from ingest_api.rate_limit import too_many_requests
from ingest_api.sources.browser import query_params
from ingest_api.sources.key_cache import KeysUnavailableError
from ingest_api.sources.post_door import post_door
from ingest_api.sources.segment_mapping import map_message, parse_time
from ingest_api.sources.site_keys import origin_allowed
from ingest_api.state import IngestState
from shared.db.sites import Site
from shared.ids import derived_id, new_id

log = structlog.get_logger(__name__)

BATCH_PATH = "/v1/batch"
# Each single-message path, and the type its message has when it names none.
MESSAGE_PATHS = {
    f"/v1/{kind}": kind for kind in ("track", "identify", "page", "screen", "group", "alias")
}
PATHS = (BATCH_PATH, *MESSAGE_PATHS)
BODY_LIMIT = BATCH_BODY_LIMIT
GZIP_MAGIC = b"\x1f\x8b"
QUERY_LIMIT = 1024
MAX_PARAMS = 8
MESSAGE_ID_LIMIT = 255

SKIPPED = Counter(
    "leadstream_segment_skipped_total", "Segment/RudderStack messages skipped", ["reason"]
)


async def _receive(state: IngestState, scope: Scope, receive: Receive, send: Send) -> None:
    headers = dict(scope["headers"])
    key = _header_key(headers) or _query_key(scope)
    # A key outside the body is checked before the body is read.
    site = await _admitted(state, key, headers) if key is not None else None
    raw = await read_body(headers, receive, BODY_LIMIT, state.settings.body_timeout_seconds)
    data = parse_json(_decoded(headers, raw))
    if not isinstance(data, dict):
        raise _invalid(["body"], "send a JSON object")
    if site is None:
        body_key = data.get("writeKey")
        site = await _admitted(state, body_key if isinstance(body_key, str) else None, headers)
    default_type = MESSAGE_PATHS.get(scope["path"])
    messages = [data] if default_type is not None else _batch(data)
    received_at = datetime.now(UTC)
    events: list[dict[str, Any]] = []
    ids: list[UUID] = []
    for index, message in enumerate(messages):
        mapped = map_message(
            message,
            default_type=default_type,
            sent_at=data.get("sentAt"),
            ip_policy=site.ip_policy,
        )
        if isinstance(mapped, str):
            SKIPPED.labels("unmapped").inc()
            log.info("segment.skipped", index=index, reason=mapped, site=site.key)
            continue
        events.append(mapped)
        ids.append(_event_id(site.tenant_id, message, received_at))
    planned = await plan_events(events, site.tenant_id, received_at, ids=ids.__getitem__)
    for result in planned.results:
        if result["status"] == "rejected":
            SKIPPED.labels("invalid").inc()
            log.info("segment.skipped", errors=result["errors"], site=site.key)
    await queue_planned(state, planned)
    await _ok(send)


async def _admitted(state: IngestState, key: str | None, headers: dict[bytes, bytes]) -> Site:
    """The key's site, once its origin and rate limit admit the request."""
    site = await _site(state, key)
    if not origin_allowed(site, headers.get(b"origin")):
        raise ProblemError(403, "Forbidden", "this origin may not use this key", kind="forbidden")
    decision = await state.limiter.check(
        f"site:{site.key}", rate=site.rate_per_second, burst=site.rate_burst
    )
    if not decision.allowed:
        raise too_many_requests(decision, "site key")
    return site


async def _site(state: IngestState, key: str | None) -> Site:
    """The site the write key names; 401 without a working key, 503 if none can be read."""
    try:
        site = await state.sites.find(key)
    except KeysUnavailableError:
        raise unavailable_to_check("key") from None
    if site is None:
        raise ProblemError(
            401,
            "Unauthorized",
            "send a site key as the write key: this one is missing, unknown or revoked",
            kind="unauthorized",
        )
    return site


def _header_key(headers: dict[bytes, bytes]) -> str | None:
    """The key of `Authorization: Basic base64(key:)` or `Bearer key`."""
    scheme, _, credentials = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip() or None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


def _query_key(scope: Scope) -> str | None:
    query: bytes = scope.get("query_string", b"")
    params = query_params(query, MAX_PARAMS) if len(query) <= QUERY_LIMIT else None
    return params.get("writeKey") if params is not None else None


def _decoded(headers: dict[bytes, bytes], raw: bytes) -> bytes:
    # Clients gzip without saying so (posthog-js does): the bytes decide.
    if raw[:2] == GZIP_MAGIC:
        return gunzip({b"content-encoding": b"gzip"}, raw, BODY_LIMIT)
    return gunzip(headers, raw, BODY_LIMIT)


def _batch(data: dict[str, Any]) -> list[Any]:
    batch = data.get("batch")
    if not isinstance(batch, list) or not 0 < len(batch) <= BATCH_MAX_EVENTS:
        raise _invalid(["body", "batch"], f"a list of 1 to {BATCH_MAX_EVENTS} messages")
    return batch


def _event_id(tenant_id: UUID, message: Any, received_at: datetime) -> UUID:
    """Derived from the tenant and the client's messageId, so a resent message names the same
    event; its time part is the message's timestamp (receipt time without one)."""
    message_id = message.get("messageId")
    if isinstance(message_id, int) and not isinstance(message_id, bool):
        message_id = str(message_id)
    if not isinstance(message_id, str) or not 0 < len(message_id) <= MESSAGE_ID_LIMIT:
        return new_id()
    at = parse_time(message.get("timestamp")) or received_at
    return derived_id(
        int(at.timestamp() * 1000), b"segment|" + tenant_id.bytes + message_id.encode()
    )


def _invalid(loc: list[str], msg: str) -> ProblemError:
    return ProblemError(
        422,
        "Invalid batch",
        msg,
        kind="validation",
        errors=[{"loc": loc, "msg": msg}],
    )


async def _ok(send: Send) -> None:
    """200 `{}`: what Segment's clients, and RudderStack's, count as delivered."""
    headers = [(b"content-type", JSON), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"{}"})


serve_segment = post_door("segment", _receive)
