"""The OpenAPI document: FastAPI's, plus the plain-ASGI POSTs it cannot see and the Problem
schema every error refers to."""

from typing import Any

from fastapi import FastAPI

from ingest_api.intake import BATCH_BODY_LIMIT, BATCH_MAX_EVENTS, EVENT_BODY_LIMIT
from ingest_api.paths import BATCH_PATH, EVENTS_PATH
from shared.contract.events import EventIn
from shared.contract.problems import Problem
from shared.settings import Settings


def problems(texts: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for these statuses, each a problem document."""
    return {
        code: {
            "description": text,
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
        for code, text in texts.items()
    }


READ_PROBLEMS = problems(
    {
        401: "Missing or invalid token",
        403: "Token lacks the scope",
        404: "Unknown, or another tenant's",
        422: "Invalid parameter: each in errors[].loc",
    }
)


PROBLEMS = problems(
    {
        400: "Malformed JSON (or gzip, on the batch)",
        401: "Missing or invalid token",
        403: "Token lacks the scope",
        404: "Person or company not found (with Prefer: wait)",
        408: "The body did not arrive within LEADSTREAM_BODY_TIMEOUT_SECONDS",
        413: f"Body over {EVENT_BODY_LIMIT // 1024} KB ({BATCH_BODY_LIMIT // 1024} KB batch)",
        415: "Not application/json",
        422: "Invalid event: every wrong field in errors[].loc (an Idempotency-Key reused with"
        " a different event: loc header, Idempotency-Key)",
        503: "Queue unavailable, or the API is starting: retry after Retry-After seconds",
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
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


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
        "description": "Queue one event (202), or wait up to N seconds for Sure Send's answer.",
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
    return {EVENTS_PATH: {"post": single}, BATCH_PATH: {"post": batch}}
