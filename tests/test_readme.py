"""The README's walk-through, run as written against the running API and worker."""

import asyncio
import subprocess
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.tenants import ensure_tenant
from shared.settings import Settings
from tests.support.processes import REPO, WorkerProcess
from tests.support.walkthrough import check_walkthrough, walkthrough


async def test_readme_walkthrough_runs(
    api_url: str,
    worker: WorkerProcess,
    service_env: dict[str, str],
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    async with engine.begin() as conn:
        await ensure_tenant(conn, name="demo", default_region="US")
    script = tmp_path / "walkthrough.sh"
    script.write_text("set -euo pipefail\n" + walkthrough())
    result = await asyncio.to_thread(
        subprocess.run,
        ["bash", str(script)],
        env={**service_env, "LEADSTREAM_URL": api_url},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    check_walkthrough(result)


def test_every_setting_is_in_the_configuration_table() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Configuration")[1].split("\n## ")[0]
    missing = [n for n in Settings.model_fields if f"`LEADSTREAM_{n.upper()}`" not in table]
    assert not missing, f"settings missing from README's table: {missing}"
