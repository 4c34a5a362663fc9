"""Reads of the companies events create."""

from uuid import UUID

from fastapi import APIRouter
from starlette.responses import Response

from ingest_api.auth import ReaderDep
from ingest_api.openapi import READ_PROBLEMS
from ingest_api.responses import found_response
from ingest_api.state import StateDep
from shared.contract.responses import CompanyOut
from shared.db.reads import load_company

router = APIRouter(prefix="/api/partner", tags=["records"])


@router.get(
    "/companies/{company_id}",
    summary="Read a company",
    responses={200: {"model": CompanyOut}, **READ_PROBLEMS},
)
async def read_company(company_id: UUID, state: StateDep, principal: ReaderDep) -> Response:
    async with state.engine.connect() as conn:
        body = await load_company(conn, tenant_id=principal.tenant_id, company_id=company_id)
    return found_response(body, f"company {company_id}")
