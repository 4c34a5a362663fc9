"""/readyz answers anyone: statuses only, never the reasons (hosts, ports, driver messages)."""

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from structlog.testing import capture_logs

from shared.settings import Settings
from tests.support.intake import in_process_intake
from tests.support.writers import StandInWriter


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


REDIS_PORT, DB_PORT = _closed_port(), _closed_port()
SETTINGS = Settings(
    redis_url=f"redis://127.0.0.1:{REDIS_PORT}/0",
    database_url=f"postgresql+asyncpg://postgres@127.0.0.1:{DB_PORT}/none",
    log_format="json",
)


@pytest.fixture
async def anonymous() -> AsyncIterator[httpx.AsyncClient]:
    async with in_process_intake(SETTINGS, StandInWriter()) as intake:
        transport = httpx.ASGITransport(app=intake)
        async with httpx.AsyncClient(transport=transport, base_url="http://intake") as http:
            yield http


async def test_readyz_names_what_failed_but_not_why(anonymous: httpx.AsyncClient) -> None:
    with capture_logs() as logs:
        response = await anonymous.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "not ready",
        "checks": {"redis": "error", "database": "error"},
    }
    for port in (REDIS_PORT, DB_PORT):
        assert str(port) not in response.text
    # The reasons are logged for the operator.
    logged = " ".join(str(entry.get("error")) for entry in logs)
    assert str(REDIS_PORT) in logged and str(DB_PORT) in logged
