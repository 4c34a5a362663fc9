"""The Segment-compatible door's OpenAPI operations (`ingest_api.sources.segment`)."""

from typing import Any

from ingest_api.handoff import BATCH_MAX_EVENTS
from ingest_api.problems import problem_responses
from ingest_api.sources import segment

SEGMENT_PROBLEMS = problem_responses(
    {
        400: "Malformed JSON, or gzip that is invalid, truncated or followed by other bytes",
        401: "A missing, unknown or revoked write key (site key)",
        403: "An Origin the site does not list",
        405: "Not POST",
        408: "The body did not arrive within LEADSTREAM_BODY_TIMEOUT_SECONDS",
        413: f"Body over {segment.BODY_LIMIT // 1024} KB, before or after gzip decoding",
        415: "A Content-Encoding other than gzip or identity on a body that is not gzip",
        422: f"A body that is no JSON object, or a batch of no messages or over {BATCH_MAX_EVENTS}",
        429: "Over the site key's rate limit: Retry-After and RateLimit-* headers",
        503: "Queue unavailable, or the key cannot be checked now: retry after Retry-After",
    }
)


def _segment_operation(kind: str | None) -> dict[str, Any]:
    """Segment's HTTP Tracking API: the batch (`kind` None) or one message of `kind`."""
    what = (
        f'`{{"batch": [...], "sentAt"?, "writeKey"?}}`: up to {BATCH_MAX_EVENTS} messages'
        if kind is None
        else f"one `{kind}` message (its `type` defaults to `{kind}`)"
    )
    return {
        "tags": ["segment"],
        "summary": "Segment batch" if kind is None else f"Segment {kind}",
        "description": (
            f"Segment's (and RudderStack's) HTTP Tracking API: {what}. The write key is a site"
            " key (`leadstream site create`), sent as `Authorization: Basic base64(key:)`,"
            " `Bearer <key>`, `?writeKey=` or the body's `writeKey`. A gzip body is decoded"
            " by its magic bytes, with or without `Content-Encoding`;"
            f" at most {segment.BODY_LIMIT // 1024} KB decoded. Each message is mapped onto"
            " an event (README: Migrating from Segment / RudderStack) and validated on its own:"
            " one that is no valid event is skipped (`leadstream_segment_skipped_total`), the"
            " others queued. An event's id is derived from the tenant and the message's"
            " `messageId`, so a resent message is stored once."
        ),
        "operationId": "segment_batch" if kind is None else f"segment_{kind}",
        "security": [{"basic": []}, {}],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "responses": {
            "200": {
                "description": "Received: every valid message queued (always `{}`)",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            **{str(code): value for code, value in SEGMENT_PROBLEMS.items()},
        },
    }


def segment_paths() -> dict[str, Any]:
    """`/v1/batch` and each single-message path."""
    return {
        segment.BATCH_PATH: {"post": _segment_operation(None)},
        **{
            path: {"post": _segment_operation(kind)} for path, kind in segment.MESSAGE_PATHS.items()
        },
    }
