"""The README's walk-through, run as written against the running API and worker."""

import asyncio
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.tenants import ensure_tenant
from shared.settings import Settings
from tests.support.processes import REPO, WorkerProcess
from tests.support.walkthrough import check_walkthrough, run_walkthrough


async def test_readme_walkthrough_runs(
    api_url: str,
    worker: WorkerProcess,
    service_env: dict[str, str],
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    async with engine.begin() as conn:
        await ensure_tenant(conn, name="demo", default_region="US")
    result = await asyncio.to_thread(
        run_walkthrough, {**service_env, "LEADSTREAM_URL": api_url}, tmp_path
    )
    check_walkthrough(result)


def test_every_setting_is_in_the_configuration_table() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Configuration")[1].split("\n## ")[0]
    missing = [n for n in Settings.model_fields if f"`LEADSTREAM_{n.upper()}`" not in table]
    assert not missing, f"settings missing from README's table: {missing}"
