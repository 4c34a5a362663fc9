"""The README's walk-through, run as written against the running API and worker."""

import asyncio
import json
import re
import subprocess
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.tenants import ensure_tenant
from tests.support.processes import REPO, WorkerProcess


def walkthrough() -> str:
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- walkthrough:start -->")[1].split("<!-- walkthrough:end -->")[0]
    return block.split("```bash")[1].split("```")[0]


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
    assert result.returncode == 0, result.stderr
    statuses = re.findall(r"^HTTP/1.1 (\d{3})", result.stdout, re.MULTILINE)
    assert statuses[:3] == ["202", "201", "200"], result.stdout
    assert statuses[3] in {"200", "202"}
    assert statuses[4] == "202"
    batch = json.loads(result.stdout[result.stdout.index('{"results":') :].splitlines()[0])
    assert [r["status"] for r in batch["results"]] == ["queued", "rejected", "queued"]
    assert statuses[5] == "200"
    timeline = json.loads(result.stdout[result.stdout.index('{"events":') :].splitlines()[0])
    # Steps 1-3 are stored by now (2 and 3 waited; 1 before 2); step 4's may still be queued.
    assert {e["eventType"] for e in timeline["events"]} >= {"form_submission", "property_view"}
    assert '"wasPersonCreated":true' in result.stdout
    assert '"wasCompanyCreated":false' in result.stdout
