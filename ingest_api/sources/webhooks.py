"""`POST /hooks/{sourceId}`: events from a registered server, signed with the source's secret.

The request carries `X-Leadstream-Signature: t=<unix seconds>,v1=<hex>`, where the hex is
HMAC-SHA256(secret, t + "." + raw body). A signature is accepted within `TOLERANCE_SECONDS`
of our clock, either way, compared in constant time; a sender may list several `v1=` (one per
secret it holds while it rotates). After `leadstream source rotate` both the new and the old
secret verify until the overlap ends.

Order of checks, cheapest and least revealing first: the source's id (by shape, then the key
cache), the header and its timestamp, before any byte of the body is read; then the body,
within `BODY_LIMIT` and the body deadline; then the signature; only then the source's rate
limit, so unsigned requests cannot spend a real sender's budget. Any failure of the first
three answers 401 and queues nothing.

The body is one event, or `{"events": [...]}` (at most `BATCH_MAX_EVENTS`, each validated on
its own, like the partner batch). A delivery is named by what its signature covers (source,
timestamp, body): its events' ids are derived from that name, so the same signed request
delivered twice (a sender's retry, or a replay within the window) answers the same ids, and
the worker, which never inserts an id twice, stores its events once. A short-lived Redis
marker spares queueing a delivery seen already; it is an optimisation, not the guarantee.
"""

import hashlib
import hmac
import re
import time
from datetime import UTC, datetime
from uuid import UUID

import orjson
import structlog
from prometheus_client import Counter
from redis.exceptions import RedisError

from ingest_api.asgi import Receive, Scope, Send
from ingest_api.handoff import (
    BATCH_BODY_LIMIT,
    batch_items,
    parse_json,
    plan_events,
    queue_planned,
)
from ingest_api.http_body import gunzip, read_body, send_accepted
from ingest_api.problems import (
    ProblemError,
    unavailable_to_check,
)
from ingest_api.rate_limit import too_many_requests
from ingest_api.responses import queued_body
from ingest_api.sources.key_cache import KeysUnavailableError
from ingest_api.sources.post_door import post_door
from ingest_api.state import IngestState
from shared.db.sources import Source
from shared.ids import derived_id

log = structlog.get_logger(__name__)

HOOKS_PREFIX = "/hooks/"
SIGNATURE_HEADER = b"x-leadstream-signature"
BODY_LIMIT = BATCH_BODY_LIMIT
TOLERANCE_SECONDS = 300
# A header longer than this is no signature: a few v1= values at most.
HEADER_LIMIT = 1024
MAX_SIGNATURES = 4
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
# ASCII digits only: str.isdigit() takes "²", which int() refuses.
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")
# A failed check reloads the source at most this often, so a just-rotated secret works within
# a second, not a whole cache TTL, and bad signatures cost at most a query a second.
RELOAD_SECONDS = 1.0

# A delivery seen within this long is answered as a replay, queued nothing. Past it, its
# signature is stale anyway (TOLERANCE_SECONDS either way of our clock, and a margin).
REPLAY_SECONDS = 3 * TOLERANCE_SECONDS
REPLAY_PREFIX = b"ls:hook:"

REFUSED = Counter(
    "leadstream_webhook_refused_total", "Webhook requests refused with 401", ["reason"]
)


def _signed(timestamp: int, body: bytes) -> bytes:
    return str(timestamp).encode() + b"." + body


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `v1` signature of `body` sent at `timestamp` (what a sender computes)."""
    return hmac.new(secret.encode(), _signed(timestamp, body), hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `X-Leadstream-Signature` value for `body`, now or at `timestamp`."""
    at = int(time.time()) if timestamp is None else timestamp
    return f"t={at},v1={sign(secret, at, body)}"


def _refused(
    reason: str, detail: str, loc: tuple[str, str] = ("header", "X-Leadstream-Signature")
) -> ProblemError:
    REFUSED.labels(reason).inc()
    return ProblemError(
        401,
        "Unauthorized",
        detail,
        kind="unauthorized",
        errors=[{"loc": list(loc), "msg": detail, "type": reason}],
    )


def _parse_signature(header: bytes | None, now: float) -> tuple[int, list[str]]:
    """The header's timestamp and v1 signatures; 401 when missing, malformed or stale."""
    if header is None:
        raise _refused("missing", "sign the request: X-Leadstream-Signature: t=<unix>,v1=<hex>")
    if len(header) > HEADER_LIMIT:
        raise _refused("malformed", "X-Leadstream-Signature is too long")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.decode("latin-1").split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and _UNIX_SECONDS.fullmatch(value):
            timestamp = int(value)
        elif name == "v1" and _HEX_DIGEST.fullmatch(value):
            # Hex only: compare_digest refuses non-ASCII text with a TypeError, a 500.
            signatures.append(value.lower())
    if timestamp is None or not signatures or len(signatures) > MAX_SIGNATURES:
        raise _refused(
            "malformed", "X-Leadstream-Signature must be t=<unix seconds>,v1=<64 hex digits>"
        )
    if abs(now - timestamp) > TOLERANCE_SECONDS:
        raise _refused(
            "stale",
            f"the signature's timestamp is more than {TOLERANCE_SECONDS} s from our clock:"
            " sign each delivery when it is sent",
        )
    return timestamp, signatures


def _verified(source: Source, timestamp: int, signatures: list[str], body: bytes) -> bool:
    """Whether a signature matches one of the source's valid secrets."""
    matched = False
    for secret in source.secrets_valid_at(datetime.now(UTC)):
        expected = sign(secret, timestamp, body)
        for given in signatures:
            # Every pair is compared, so the time taken says nothing of which one matched.
            matched |= hmac.compare_digest(expected, given)
    return matched


async def _receive(state: IngestState, scope: Scope, receive: Receive, send: Send) -> None:
    headers = dict(scope["headers"])
    source_id = scope["path"][len(HOOKS_PREFIX) :]
    source = await _source(state, source_id)
    timestamp, signatures = _parse_signature(headers.get(SIGNATURE_HEADER), time.time())
    raw = await read_body(headers, receive, BODY_LIMIT, state.settings.body_timeout_seconds)
    if not _verified(source, timestamp, signatures, raw):
        # Perhaps signed with a secret rotated in since this process cached the source.
        source = await _source(state, source_id, max_age=RELOAD_SECONDS)
        if not _verified(source, timestamp, signatures, raw):
            raise _refused("mismatch", "the signature does not match the body and a valid secret")
    # What the signature covers names the delivery, whichever of its v1= matched.
    delivery = hashlib.sha256(source.id.encode() + b"|" + _signed(timestamp, raw)).digest()
    marker = REPLAY_PREFIX + delivery[:16]
    replayed = await _seen(state, marker)
    # A replay spends a bucket of its own: whoever holds a captured request cannot use it to
    # spend the sender's budget.
    bucket = f"{'hook-replay' if replayed else 'source'}:{source.id}"
    decision = await state.limiter.check(
        bucket, rate=source.rate_per_second, burst=source.rate_burst
    )
    if not decision.allowed:
        raise too_many_requests(decision, "source")
    body = gunzip(headers, raw, BODY_LIMIT)
    data = parse_json(body)
    single = not (isinstance(data, dict) and "events" in data)
    planned = await plan_events(
        [data] if single else batch_items(data),
        source.tenant_id,
        datetime.now(UTC),
        ids=lambda index: derived_id(timestamp * 1000, delivery + index.to_bytes(2, "big")),
        single=single,
    )
    if single and planned.results[0]["status"] == "rejected":
        errors = planned.results[0]["errors"]
        raise ProblemError(
            422,
            "Invalid event",
            f"{len(errors)} field(s) are invalid; see errors[].loc",
            kind="validation",
            errors=errors,
        )
    extra = {"Idempotent-Replayed": "true"} if replayed else {}
    if not replayed:
        await queue_planned(state, planned)
        await _remember(state, marker)
    if single:
        await send_accepted(send, queued_body(UUID(planned.results[0]["id"])), extra)
    else:
        await send_accepted(send, orjson.dumps({"results": planned.results}), extra)


async def _seen(state: IngestState, marker: bytes) -> bool:
    """Whether this delivery was queued already. Unknown while Redis does not answer: then it
    is queued again, and its events' ids, derived from the delivery, are stored once."""
    try:
        return bool(await state.redis.exists(marker))
    except (RedisError, OSError) as exc:
        log.warning("webhook.replay_check_failed", error=str(exc) or type(exc).__name__)
        return False


async def _remember(state: IngestState, marker: bytes) -> None:
    try:
        await state.redis.set(marker, b"1", ex=REPLAY_SECONDS)
    except (RedisError, OSError) as exc:
        log.warning("webhook.replay_mark_failed", error=str(exc) or type(exc).__name__)


async def _source(state: IngestState, source_id: str, max_age: float | None = None) -> Source:
    """The source the path names; 401 without an active one, 503 if none can be read."""
    try:
        source = await state.hook_sources.find(source_id, max_age=max_age)
    except KeysUnavailableError:
        raise unavailable_to_check("source") from None
    if source is None:
        raise _refused("unknown-source", "this source is unknown or revoked", ("path", "sourceId"))
    return source


serve_webhook = post_door("webhook", _receive)
