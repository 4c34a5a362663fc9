"""Liveness, readiness and metrics."""

import structlog
from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.responses import JSONResponse, Response

from ingest_api.state import StateDep

log = structlog.get_logger(__name__)
router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Redis and PostgreSQL answer and migrations are current")
async def readyz(state: StateDep) -> Response:
    # Anyone may ask: the answer is a status per check, the reasons (hosts, versions, driver
    # messages) go to the log only.
    checks: dict[str, str] = {}
    try:
        await state.redis.ping()
        checks["redis"] = state.redis_policy_problem or "ok"
    except Exception as exc:
        log.warning("readyz.redis", error=f"{type(exc).__name__}: {exc}")
        checks["redis"] = "error"
    try:
        async with state.engine.connect() as conn:
            current = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        head = state.migration_head
        checks["database"] = "ok"
        checks["migrations"] = "ok" if current == head else "behind"
        if current != head:
            log.warning("readyz.migrations", current=current, head=head)
    except Exception as exc:
        log.warning("readyz.database", error=f"{type(exc).__name__}: {exc}")
        checks["database"] = "error"
    ready = all(v == "ok" for v in checks.values()) and len(checks) == 3
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
