"""RFC 9457 problem details for every error the API returns."""

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from shared.contract.problems import MEDIA_TYPE, problem_body


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        kind: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.kind, self.errors, self.headers = kind, errors, headers


def problem_response(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    kind: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    body = problem_body(status, title, detail, kind=kind, errors=errors, extra=extra)
    return Response(orjson.dumps(body), status_code=status, media_type=MEDIA_TYPE, headers=headers)


def field_errors(
    errors: Sequence[Mapping[str, Any]], *, prefix: tuple[str | int, ...] = ()
) -> list[dict[str, Any]]:
    """Pydantic's errors as a problem's errors[]: loc (under `prefix`), msg and type."""
    return [
        {"loc": [*prefix, *error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in errors
    ]


def validation_problem(
    errors: Sequence[Mapping[str, Any]], *, prefix: tuple[str | int, ...] = ()
) -> ProblemError:
    """400 for a body that is not JSON, else 422 naming every wrong field in errors[].loc."""
    listed = field_errors(errors, prefix=prefix)
    if any(e["type"] == "json_invalid" for e in listed):
        return ProblemError(
            400,
            "Malformed JSON",
            "the body is not valid JSON",
            kind="malformed-json",
            errors=listed,
        )
    return ProblemError(
        422,
        "Invalid event",
        f"{len(listed)} field(s) are invalid; see errors[].loc",
        kind="validation",
        errors=listed,
    )


def not_ready() -> ProblemError:
    """503 while the lifespan has not made the process's state (an ASGI test client may ask)."""
    return ProblemError(
        503, "Starting", "the API is not ready", kind="not-ready", headers={"Retry-After": "1"}
    )


def unavailable_to_check(what: str) -> ProblemError:
    """503 when PostgreSQL cannot say whether a key is valid, for a key this process has not
    seen yet."""
    return ProblemError(
        503,
        "Unavailable",
        f"the {what} cannot be checked now: retry after Retry-After seconds",
        kind="unavailable",
        headers={"Retry-After": "1"},
    )


def problem_error_response(exc: ProblemError) -> Response:
    return problem_response(
        exc.status, exc.title, exc.detail, kind=exc.kind, errors=exc.errors, headers=exc.headers
    )


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> Response:
        return problem_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        return problem_error_response(validation_problem(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers) if exc.headers else None
        return problem_response(exc.status_code, str(exc.detail), headers=headers)


def problem_responses(texts: dict[int, str]) -> dict[int | str, dict[str, Any]]:
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
