"""`GET /pixel.gif?k=<site key>&t=<type>&...`: an event in an image URL, for pages and e-mails
that cannot run the snippet.

It always answers the same 1x1 transparent GIF with `Cache-Control: no-store`, whatever
happened: a broken image must never show on a customer's page. What it refused (bad input, an
unknown key, over the rate limit, the queue down) is counted in
`leadstream_pixel_refused_total{reason}` and logged instead. No body is read; the query string
is capped at `QUERY_LIMIT` bytes and `MAX_PARAMS` parameters.

The parameters (`PARAMS`; unknown ones, such as cache busters, are ignored) map onto `EventIn`;
`ts` is ISO 8601 or Unix milliseconds; `m.<name>=<value>` adds metadata (strings).
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import Counter
from pydantic import ValidationError

from ingest_api.asgi import Receive, Scope, Send
from ingest_api.handoff import queue_event
from ingest_api.problems import ProblemError, problem_error_response
from ingest_api.sources.browser import RequestFacts, completion, query_params
from ingest_api.sources.key_cache import KeysUnavailableError
from ingest_api.sources.site_keys import origin_allowed
from ingest_api.state import IngestState
from shared.contract.events import EventIn

log = structlog.get_logger(__name__)

PIXEL_PATH = "/pixel.gif"
# The usual 43-byte transparent GIF: 1x1, a two-colour palette, colour 0 transparent.
GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
QUERY_LIMIT = 8 * 1024
MAX_PARAMS = 64
_GIF_HEADERS = [
    (b"content-type", b"image/gif"),
    (b"content-length", str(len(GIF)).encode()),
    (b"cache-control", b"no-store"),
]

REFUSED = Counter("leadstream_pixel_refused_total", "Pixel requests not queued", ["reason"])


def _millis_or_iso(value: str) -> Any:
    # Unix milliseconds, bounded so that no digit string can overflow a datetime.
    if value.isdigit() and len(value) <= 13:
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    return value


def _integer(value: str) -> Any:
    return int(value) if value.isdigit() and len(value) <= 10 else value


# Query parameter → (path in EventIn's camelCase JSON, conversion). Values stay strings
# unless converted; a value EventIn refuses makes the whole request refused ("invalid").
PARAMS: dict[str, tuple[tuple[str, ...], Callable[[str], Any]]] = {
    "t": (("type",), str),
    "u": (("pageUrl",), str),
    "r": (("pageReferrer",), str),
    "ti": (("pageTitle",), str),
    "d": (("pageDuration",), _integer),
    "v": (("visitorId",), str),
    "e": (("person", "emails"), lambda value: [value]),
    "p": (("person", "phones"), lambda value: [value]),
    "fn": (("person", "firstName"), str),
    "ln": (("person", "lastName"), str),
    "c": (("company", "name"), str),
    "pid": (("property", "id"), str),
    "src": (("source",), str),
    "ts": (("occurredAt",), _millis_or_iso),
}
METADATA_PREFIX = "m."
DEFAULT_TYPE = "page_view"


def event_fields(params: dict[str, str]) -> dict[str, Any]:
    """The query's parameters as an event's JSON fields (unvalidated)."""
    fields: dict[str, Any] = {"type": DEFAULT_TYPE}
    for name, value in params.items():
        if name.startswith(METADATA_PREFIX) and len(name) > len(METADATA_PREFIX):
            fields.setdefault("metadata", {})[name.removeprefix(METADATA_PREFIX)] = value
            continue
        mapping = PARAMS.get(name)
        if mapping is None:
            continue
        path, convert = mapping
        target = fields
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = convert(value)
    return fields


async def serve_pixel(
    state: IngestState | None, scope: Scope, receive: Receive, send: Send
) -> None:
    if scope["method"] not in {"GET", "HEAD"}:
        error = ProblemError(405, "Method not allowed", "use GET", headers={"Allow": "GET, HEAD"})
        await problem_error_response(error)(scope, receive, send)
        return
    # HEAD asks what GET would answer: nothing is queued for it.
    reason = await _queue(state, scope) if scope["method"] == "GET" else None
    if reason is not None:
        REFUSED.labels(reason).inc()
    await send({"type": "http.response.start", "status": 200, "headers": _GIF_HEADERS})
    await send({"type": "http.response.body", "body": GIF if scope["method"] == "GET" else b""})


async def _queue(state: IngestState | None, scope: Scope) -> str | None:
    """Queue the pixel's event; the reason it was not, if it was not."""
    if state is None:
        return "not_ready"
    query: bytes = scope.get("query_string", b"")
    if len(query) > QUERY_LIMIT:
        log.info("pixel.refused", reason="too_long", length=len(query))
        return "too_long"
    params = query_params(query, MAX_PARAMS)
    if params is None:
        log.info("pixel.refused", reason="too_many_params")
        return "too_many_params"
    try:
        site = await state.sites.find(params.pop("k", None))
    except KeysUnavailableError:
        return "unavailable"  # logged by the cache
    if site is None:
        log.info("pixel.refused", reason="unknown_key")
        return "unknown_key"
    headers = dict(scope["headers"])
    if not origin_allowed(site, headers.get(b"origin")):
        log.info("pixel.refused", reason="origin", site=site.key)
        return "origin"
    decision = await state.limiter.check(
        f"site:{site.key}", rate=site.rate_per_second, burst=site.rate_burst
    )
    if not decision.allowed:
        return "rate_limited"  # counted, not logged: a flood would flood the log
    try:
        event = EventIn.model_validate(event_fields(params))
    except ValidationError as exc:
        log.info(
            "pixel.refused",
            reason="invalid",
            site=site.key,
            errors=[
                {"loc": error["loc"], "msg": error["msg"]}
                for error in exc.errors(include_url=False, include_input=False)
            ],
        )
        return "invalid"
    try:
        await queue_event(
            state, event, site.tenant_id, completion(event, site, RequestFacts.of(scope, headers))
        )
    except ProblemError as exc:
        log.info("pixel.refused", reason=exc.kind, site=site.key, detail=exc.detail)
        return "queue_unavailable" if exc.status == 503 else "invalid"
    return None
