"""`POST /beacon?k=<site key>`: one event as JSON from a web page, `navigator.sendBeacon`'s way.

sendBeacon cannot set headers, so the body comes as `text/plain` (application/json is taken
too) and the key in the query. At most `BODY_LIMIT` bytes (413), validated like the partner
API's events (422 naming the field), answered 204. A request with an `Origin` the site does not
list is refused (403) before its body is read; an allowed origin gets CORS headers on every
answer, and its `OPTIONS` preflights are answered (403 for any other origin).
"""

import structlog
from pydantic import ValidationError

from ingest_api.asgi import Receive, Scope, Send
from ingest_api.handoff import queue_event
from ingest_api.http_body import DisconnectedError, read_body
from ingest_api.problems import (
    ProblemError,
    not_ready,
    problem_error_response,
    problem_response,
    unavailable_to_check,
    validation_problem,
)
from ingest_api.rate_limit import RATE_LIMIT_HEADERS, too_many_requests
from ingest_api.sources.browser import RequestFacts, completion, cors_headers, query_params
from ingest_api.sources.key_cache import KeysUnavailableError
from ingest_api.sources.site_keys import origin_allowed
from ingest_api.state import IngestState
from shared.contract.events import EventIn
from shared.db.sites import Site

log = structlog.get_logger(__name__)

BEACON_PATH = "/beacon"
BODY_LIMIT = 64 * 1024
_CONTENT_TYPES = {b"", b"text/plain", b"application/json"}
# A preflight's answer may be reused this long (browsers cap it: Chrome at 2 h).
PREFLIGHT_MAX_AGE = 7200
# The query carries only the key: a longer one is not read.
QUERY_LIMIT = 1024
MAX_PARAMS = 8


async def serve_beacon(
    state: IngestState | None, scope: Scope, receive: Receive, send: Send
) -> None:
    headers = dict(scope["headers"])
    cors: dict[str, str] = {}
    try:
        if state is None:
            raise not_ready()
        site = await _site(state, scope)
        origin = headers.get(b"origin")
        if not origin_allowed(site, origin):
            raise ProblemError(
                403, "Forbidden", "this origin may not use this key", kind="forbidden"
            )
        if origin is not None:
            cors = cors_headers(origin)
        if scope["method"] == "OPTIONS":
            await _preflight(scope, receive, send, origin, cors)
            return
        if scope["method"] != "POST":
            raise ProblemError(
                405, "Method not allowed", "use POST", headers={"Allow": "POST, OPTIONS"}
            )
        decision = await state.limiter.check(
            f"site:{site.key}", rate=site.rate_per_second, burst=site.rate_burst
        )
        if not decision.allowed:
            raise too_many_requests(decision, "site key")
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type not in _CONTENT_TYPES and not content_type.endswith(b"+json"):
            raise ProblemError(
                415,
                "Unsupported media type",
                "send the event as text/plain or application/json",
                kind="unsupported-media-type",
            )
        body = await read_body(headers, receive, BODY_LIMIT, state.settings.body_timeout_seconds)
        try:
            event = EventIn.model_validate_json(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            raise validation_problem(errors, prefix=("body",)) from None
        await queue_event(
            state, event, site.tenant_id, completion(event, site, RequestFacts.of(scope, headers))
        )
        await _no_content(send, cors)
    except DisconnectedError:
        return
    except ProblemError as exc:
        exc.headers = {**(exc.headers or {}), **cors}
        if cors and exc.status == 429:  # so the page's script may read when to retry
            exc.headers["Access-Control-Expose-Headers"] = ", ".join(RATE_LIMIT_HEADERS)
        await problem_error_response(exc)(scope, receive, send)
    except Exception:
        log.exception("beacon.error")
        await problem_response(500, "Internal server error", kind="internal", headers=cors)(
            scope, receive, send
        )


async def _site(state: IngestState, scope: Scope) -> Site:
    """The site the `k` parameter names; 401 without a working key, 503 if none can be read."""
    try:
        site = await state.sites.find(_key(scope))
    except KeysUnavailableError:
        raise unavailable_to_check("key") from None
    if site is None:
        raise ProblemError(
            401,
            "Unauthorized",
            "send a site key as ?k=: this one is unknown or revoked",
            kind="unauthorized",
        )
    return site


def _key(scope: Scope) -> str | None:
    query: bytes = scope.get("query_string", b"")
    if len(query) > QUERY_LIMIT:
        return None
    params = query_params(query, MAX_PARAMS)
    return params.get("k") if params is not None else None


async def _preflight(
    scope: Scope, receive: Receive, send: Send, origin: bytes | None, cors: dict[str, str]
) -> None:
    """204 for an origin the site lists; a preflight always carries one."""
    if origin is None:
        raise ProblemError(403, "Forbidden", "a preflight names its Origin", kind="forbidden")
    headers = {
        **cors,
        "Access-Control-Allow-Methods": "POST",
        "Access-Control-Allow-Headers": "Content-Type",
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
    }
    await _no_content(send, headers)


async def _no_content(send: Send, headers: dict[str, str]) -> None:
    encoded = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": 204, "headers": encoded})
    await send({"type": "http.response.body", "body": b""})
