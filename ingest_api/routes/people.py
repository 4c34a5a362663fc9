"""Reads of the people events create."""

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query
from starlette.responses import Response

from ingest_api.auth import ReaderDep
from ingest_api.openapi import READ_PROBLEMS
from ingest_api.problems import ProblemError
from ingest_api.responses import found_response
from ingest_api.state import StateDep
from shared.contract.responses import PersonOut
from shared.db.reads import load_person
from shared.db.tenants import tenant_region
from shared.identity import InvalidIdentityError, check_phone, normalize_email, normalize_phone

router = APIRouter(prefix="/api/partner", tags=["records"])


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
async def read_person(person_id: UUID, state: StateDep, principal: ReaderDep) -> Response:
    async with state.engine.connect() as conn:
        body = await load_person(conn, tenant_id=principal.tenant_id, person_id=person_id)
    return found_response(body, f"person {person_id}")


@router.get(
    "/people",
    summary="Find a person by e-mail, phone or external id",
    description="Exactly one of `email`, `phone` and `externalId`, normalised as ingestion does "
    "(an external id is only trimmed: it is case-sensitive). Only phone numbers valid for the "
    "tenant's region identify a person: an unverified one is not found.",
    responses={200: {"model": PersonOut}, **READ_PROBLEMS},
)
async def find_person(
    state: StateDep,
    principal: ReaderDep,
    email: Annotated[str | None, Query(min_length=1, max_length=320)] = None,
    phone: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    external_id: Annotated[
        str | None, Query(alias="externalId", min_length=1, max_length=255)
    ] = None,
) -> Response:
    given = {"email": email, "phone": phone, "externalId": external_id}
    named = [name for name, value in given.items() if value is not None]
    if len(named) != 1:
        raise _invalid(
            named[1] if named else "email", "give exactly one of email, phone, externalId"
        )
    not_found = "person with that e-mail, phone or external id"
    async with state.engine.connect() as conn:
        if email is not None:
            try:
                email = normalize_email(email)
            except InvalidIdentityError as exc:
                raise _invalid("email", str(exc)) from None
        elif phone is not None:
            region = await tenant_region(conn, principal.tenant_id)
            if region is None:  # the tenant no longer exists: nobody to find
                return found_response(None, not_found)
            try:
                phone = normalize_phone(check_phone(phone), region)
            except InvalidIdentityError as exc:
                raise _invalid("phone", str(exc)) from None
        elif external_id is not None and not (external_id := external_id.strip()):
            raise _invalid("externalId", "an external id cannot be blank")
        body = await load_person(
            conn,
            tenant_id=principal.tenant_id,
            email=email,
            phone=phone,
            external_id=external_id,
        )
    return found_response(body, not_found)
