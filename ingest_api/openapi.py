"""The OpenAPI document: FastAPI's, plus the plain-ASGI POSTs it cannot see and the Problem
schema every error refers to."""

from typing import Any

from fastapi import FastAPI

from ingest_api.handoff import BATCH_BODY_LIMIT, BATCH_MAX_EVENTS, EVENT_BODY_LIMIT
from ingest_api.openapi_segment import segment_paths
from ingest_api.paths import BATCH_PATH, EVENTS_PATH
from ingest_api.problems import problem_responses
from ingest_api.sources import beacon, pixel, webhooks
from shared.contract.events import EventIn
from shared.contract.problems import Problem
from shared.settings import Settings

READ_PROBLEMS = problem_responses(
    {
        401: "Missing, invalid, expired or revoked token, or its tenant unknown or disabled",
        403: "Token lacks the scope",
        404: "Unknown, or another tenant's",
        422: "Invalid parameter: each in errors[].loc",
    }
)


PROBLEMS = problem_responses(
    {
        400: "Malformed JSON, or gzip that is invalid, truncated or followed by other bytes",
        401: "Missing, invalid, expired or revoked token, or its tenant unknown or disabled",
        403: "Token lacks the scope",
        404: "Person or company not found (with Prefer: wait)",
        408: "The body did not arrive within LEADSTREAM_BODY_TIMEOUT_SECONDS",
        413: f"Body over {EVENT_BODY_LIMIT // 1024} KB ({BATCH_BODY_LIMIT // 1024} KB batch)",
        415: "Not application/json, or a Content-Encoding other than gzip or identity",
        422: "Invalid event: every wrong field in errors[].loc (an Idempotency-Key reused with"
        " a different event: loc header, Idempotency-Key)",
        429: "Over the token's rate limit: Retry-After and RateLimit-* headers",
        503: (
            "Queue unavailable, the token's tenant cannot be checked, or the API is starting:"
            " retry after Retry-After seconds"
        ),
    }
)
BEACON_PROBLEMS = problem_responses(
    {
        400: "Malformed JSON",
        401: "Unknown or revoked site key",
        403: "An Origin the site does not list",
        405: "Not POST or OPTIONS",
        408: "The body did not arrive within LEADSTREAM_BODY_TIMEOUT_SECONDS",
        413: f"Body over {beacon.BODY_LIMIT // 1024} KB",
        415: "Not text/plain or application/json",
        422: "Invalid event: every wrong field in errors[].loc",
        429: "Over the site key's rate limit: Retry-After and RateLimit-* headers",
        503: "Queue unavailable, or the key cannot be checked now: retry after Retry-After",
    }
)


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


def document(app: FastAPI, settings: Settings) -> None:
    """Add what FastAPI cannot see: the create routes, and the Problem schema errors refer to."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(problem.pop("$defs", {}))
            schemas["Problem"] = problem
            for path, operations in openapi_paths(settings, schemas).items():
                schema["paths"].setdefault(path, {}).update(operations)
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                # Segment's write key as the user name, no password.
                "basic": {"type": "http", "scheme": "basic"},
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


WEBHOOK_PROBLEMS = problem_responses(
    {
        400: "Malformed JSON, or gzip that is invalid, truncated or followed by other bytes",
        401: "Unknown or revoked source; a missing, malformed, stale (more than"
        f" {webhooks.TOLERANCE_SECONDS // 60} minutes from our clock) or wrong signature",
        405: "Not POST",
        408: "The body did not arrive within LEADSTREAM_BODY_TIMEOUT_SECONDS",
        413: f"Body over {webhooks.BODY_LIMIT // 1024} KB, before or after gzip decoding",
        415: "A Content-Encoding other than gzip or identity (Content-Type is not checked)",
        422: "Invalid event, one over"
        f" {EVENT_BODY_LIMIT // 1024} KB included (one event), or a body that is no batch:"
        " every wrong field in errors[].loc",
        429: "Over the source's rate limit: Retry-After and RateLimit-* headers",
        503: "Queue unavailable, or the source cannot be checked now: retry after Retry-After",
    }
)


def openapi_paths(settings: Settings, schemas: dict[str, Any]) -> dict[str, Any]:
    """The routes' OpenAPI operations, since FastAPI cannot see routes it does not serve."""
    event_in = EventIn.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(event_in.pop("$defs", {}))
    schemas["EventIn"] = event_in
    schemas["EventBatch"] = {
        "type": "object",
        "required": ["events"],
        "additionalProperties": False,
        "properties": {
            "events": {
                "type": "array",
                "minItems": 1,
                "maxItems": BATCH_MAX_EVENTS,
                "items": {"$ref": "#/components/schemas/EventIn"},
            }
        },
    }
    schemas["BatchResults"] = {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "status"],
                    "properties": {
                        "index": {"type": "integer"},
                        "id": {"type": "string", "format": "uuid"},
                        "status": {"type": "string", "enum": ["queued", "rejected"]},
                        "errors": {"type": "array", "items": {"type": "object"}},
                    },
                },
            }
        },
    }

    def json_content(model: str) -> dict[str, Any]:
        return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}

    def answer(model: str, description: str) -> dict[str, Any]:
        return {"description": description, "content": json_content(model)}

    errors = {str(code): value for code, value in PROBLEMS.items()}
    single = {
        "tags": ["events"],
        "summary": "Create an event",
        "description": (
            "Queue one event (202), or wait up to N seconds for Sure Send's answer."
            f" At most {EVENT_BODY_LIMIT // 1024} KB; `Content-Encoding: gzip` accepted."
        ),
        "operationId": "create_event",
        "security": [{"bearer": []}],
        "parameters": [
            {
                "name": "Prefer",
                "in": "header",
                "required": False,
                "description": (
                    f"`wait=N` (N ≤ {settings.max_wait_seconds}): answer with the outcome,"
                    " like Sure Send"
                ),
                "schema": {"type": "string"},
            },
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": (
                    f"Same key, same tenant, {_duration(settings.idempotency_ttl_seconds)}:"
                    " the first event's id, nothing new; the same key with a different event"
                    " (sentAt aside) is a 422"
                ),
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            },
        ],
        "requestBody": {"required": True, "content": json_content("EventIn")},
        "responses": {
            "202": answer("Accepted", "Queued"),
            "200": answer("EventOutcome", "Prefer: wait — person and company existed"),
            "201": answer("EventOutcome", "Prefer: wait — a person or company created"),
            **errors,
        },
    }
    batch = {
        "tags": ["events"],
        "summary": f"Create up to {BATCH_MAX_EVENTS} events",
        "description": (
            "Each event is validated on its own: the good ones are queued together, the bad ones"
            f" listed with their errors. At most {BATCH_BODY_LIMIT // 1024} KB;"
            " `Content-Encoding: gzip` accepted."
        ),
        "operationId": "create_events",
        "security": [{"bearer": []}],
        "requestBody": {"required": True, "content": json_content("EventBatch")},
        "responses": {
            "202": answer("BatchResults", "A result per event, in order: queued or rejected"),
            **errors,
        },
    }
    return {
        EVENTS_PATH: {"post": single},
        BATCH_PATH: {"post": batch},
        pixel.PIXEL_PATH: {"get": _pixel_operation()},
        beacon.BEACON_PATH: _beacon_operations(),
        f"{webhooks.HOOKS_PREFIX}{{sourceId}}": {"post": _webhook_operation()},
        **segment_paths(),
    }


def _webhook_operation() -> dict[str, Any]:
    one_or_batch = {
        "schema": {
            "oneOf": [
                {"$ref": "#/components/schemas/EventIn"},
                {"$ref": "#/components/schemas/EventBatch"},
            ]
        }
    }
    return {
        "tags": ["webhooks"],
        "summary": "Signed webhook",
        "description": (
            'Queue one event, or `{"events": [...]}` (each validated on its own, as in the'
            " batch), from a source made with `leadstream source create`. Sign each delivery:"
            ' `X-Leadstream-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "."'
            f" + raw body)>`, accepted within {webhooks.TOLERANCE_SECONDS // 60} minutes of"
            " our clock; several `v1=` may be sent (one per secret while rotating). The same"
            " signed request delivered again answers the first delivery's ids"
            " (`Idempotent-Replayed: true`) and queues nothing."
            f" At most {webhooks.BODY_LIMIT // 1024} KB; `Content-Encoding: gzip` accepted"
            " (signed as sent)."
        ),
        "operationId": "webhook",
        "parameters": [
            {
                "name": "sourceId",
                "in": "path",
                "required": True,
                "description": "The source's id (`leadstream source create`)",
                "schema": {"type": "string"},
            },
            {
                "name": "X-Leadstream-Signature",
                "in": "header",
                "required": True,
                "description": "`t=<unix seconds>,v1=<hex>`",
                "schema": {"type": "string"},
            },
        ],
        "requestBody": {"required": True, "content": {"application/json": one_or_batch}},
        "responses": {
            "202": {
                "description": "Queued: the event's id, or a result per event of a batch",
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/Accepted"},
                                {"$ref": "#/components/schemas/BatchResults"},
                            ]
                        }
                    }
                },
            },
            **{str(code): value for code, value in WEBHOOK_PROBLEMS.items()},
        },
    }


def _site_key_parameter() -> dict[str, Any]:
    return {
        "name": "k",
        "in": "query",
        "required": True,
        "description": "The site key (`leadstream site create`)",
        "schema": {"type": "string"},
    }


def _pixel_operation() -> dict[str, Any]:
    notes = {
        "t": f" (default `{pixel.DEFAULT_TYPE}`)",
        "u": " (default: the `Referer` header)",
        "e": " (one e-mail)",
        "p": " (one phone)",
        "d": " (an integer)",
        "ts": " (ISO 8601, or Unix milliseconds)",
    }
    parameters = [
        _site_key_parameter(),
        *(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": f"`{'.'.join(path)}`{notes.get(name, '')}",
                "schema": {"type": "string"},
            }
            for name, (path, _) in pixel.PARAMS.items()
        ),
        {
            "name": f"{pixel.METADATA_PREFIX}<name>",
            "in": "query",
            "required": False,
            "description": "`metadata.<name>` (a string); repeat with other names",
            "schema": {"type": "string"},
        },
    ]
    return {
        "tags": ["browser"],
        "summary": "Tracking pixel",
        "description": (
            "Queue one event from an image URL. Always answers the same 43-byte transparent"
            " GIF with `Cache-Control: no-store`, also when it refuses the event (bad input,"
            " unknown key, an Origin the site does not list, over the rate limit, queue"
            " down): refusals are counted in `leadstream_pixel_refused_total{reason}` and"
            " logged. `Referer`, `User-Agent` and the client's address (after the site's IP"
            " policy) fill the event where the query does not. Unknown parameters are"
            f" ignored; at most {pixel.QUERY_LIMIT // 1024} KB of query and"
            f" {pixel.MAX_PARAMS} parameters."
        ),
        "operationId": "pixel",
        "parameters": parameters,
        "responses": {
            "200": {
                "description": "The transparent GIF, whatever happened",
                "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    }


def _beacon_operations() -> dict[str, Any]:
    event = {"schema": {"$ref": "#/components/schemas/EventIn"}}
    post = {
        "tags": ["browser"],
        "summary": "Beacon",
        "description": (
            "Queue one event sent by `navigator.sendBeacon` (or `fetch`): the event JSON as"
            f" `text/plain` or `application/json`, at most {beacon.BODY_LIMIT // 1024} KB."
            " An allowed origin gets `Access-Control-Allow-Origin` and `Vary: Origin` on every"
            " answer. `Referer`, `User-Agent` and the client's address (after the site's IP"
            " policy) fill the event where it does not say."
        ),
        "operationId": "beacon",
        "parameters": [_site_key_parameter()],
        "requestBody": {
            "required": True,
            "content": {"text/plain": event, "application/json": event},
        },
        "responses": {
            "204": {"description": "Queued"},
            **{str(code): value for code, value in BEACON_PROBLEMS.items()},
        },
    }
    preflight = {
        "tags": ["browser"],
        "summary": "Beacon CORS preflight",
        "description": "Answered for the site's allowed origins only.",
        "operationId": "beacon_preflight",
        "parameters": [_site_key_parameter()],
        "responses": {
            "204": {"description": "Allowed: Access-Control-Allow-* headers"},
            **{
                str(code): value
                for code, value in BEACON_PROBLEMS.items()
                if code in {401, 403, 503}
            },
        },
    }
    return {"post": post, "options": preflight}
