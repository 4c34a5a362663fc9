"""Reads of the records events create: people and companies."""

from typing import Annotated
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from ingest_api.auth import require_scope
from ingest_api.problems import ProblemError, problem_response
from ingest_api.routes.events import READ_PROBLEMS
from ingest_api.state import IngestState
from shared.auth import READ_SCOPE, Principal
from shared.contract.responses import CompanyOut, PersonOut
from shared.db.reads import load_company, load_person
from shared.db.tenants import tenant_region
from shared.identity import InvalidIdentityError, check_phone, normalize_email, normalize_phone

router = APIRouter(prefix="/api/partner", tags=["records"])

Reader = Annotated[Principal, Depends(require_scope(READ_SCOPE))]


def _found(body: dict[str, object] | None, what: str) -> Response:
    if body is None:
        return problem_response(404, "Not found", f"no {what}", kind="not-found")
    return Response(orjson.dumps(body), media_type="application/json")


def _invalid(name: str, message: str) -> ProblemError:
    return ProblemError(
        422,
        "Invalid parameter",
        message,
        kind="validation",
        errors=[{"loc": ["query", name], "msg": message}],
    )


@router.get(
    "/people/{person_id}",
    summary="Read a person",
    responses={200: {"model": PersonOut}, **READ_PROBLEMS},
)
async def read_person(person_id: UUID, request: Request, principal: Reader) -> Response:
    state: IngestState = request.app.state.ingest
    async with state.engine.connect() as conn:
        body = await load_person(conn, tenant_id=principal.tenant_id, person_id=person_id)
    return _found(body, f"person {person_id}")


@router.get(
    "/people",
    summary="Find a person by e-mail or phone",
    description="Exactly one of `email` and `phone`, normalised as ingestion does.",
    responses={200: {"model": PersonOut}, **READ_PROBLEMS},
)
async def find_person(
    request: Request,
    principal: Reader,
    email: Annotated[str | None, Query(min_length=1, max_length=320)] = None,
    phone: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> Response:
    if (email is None) == (phone is None):
        raise _invalid("email" if email is None else "phone", "give exactly one of email, phone")
    state: IngestState = request.app.state.ingest
    async with state.engine.connect() as conn:
        if email is not None:
            try:
                email = normalize_email(email)
            except InvalidIdentityError as exc:
                raise _invalid("email", str(exc)) from None
        elif phone is not None:
            region = await tenant_region(conn, principal.tenant_id)
            if region is None:  # the tenant no longer exists: nobody to find
                return _found(None, "person with that e-mail or phone")
            try:
                phone = normalize_phone(check_phone(phone), region)
            except InvalidIdentityError as exc:
                raise _invalid("phone", str(exc)) from None
        body = await load_person(conn, tenant_id=principal.tenant_id, email=email, phone=phone)
    return _found(body, "person with that e-mail or phone")


@router.get(
    "/companies/{company_id}",
    summary="Read a company",
    responses={200: {"model": CompanyOut}, **READ_PROBLEMS},
)
async def read_company(company_id: UUID, request: Request, principal: Reader) -> Response:
    state: IngestState = request.app.state.ingest
    async with state.engine.connect() as conn:
        body = await load_company(conn, tenant_id=principal.tenant_id, company_id=company_id)
    return _found(body, f"company {company_id}")
