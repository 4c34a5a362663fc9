"""The README's walk-through, run as written against the running API and worker."""

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db.tenants import ensure_tenant
from shared.settings import Settings
from tests.support.processes import REPO, WorkerProcess
from tests.support.sites import stored_events
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


def _block(marker: str, language: str) -> str:
    readme = (REPO / "README.md").read_text()
    block = readme.split(f"<!-- {marker}:start -->")[1].split(f"<!-- {marker}:end -->")[0]
    return block.split(f"```{language}")[1].split("```")[0]


async def test_readme_webhook_examples_run(
    api_url: str,
    worker: WorkerProcess,
    service_env: dict[str, str],
    engine: AsyncEngine,
    tmp_path: Path,
) -> None:
    async with engine.begin() as conn:
        tenant_id = await ensure_tenant(conn, name="demo", default_region="US")
    env = {**service_env, "LEADSTREAM_URL": api_url}
    script = tmp_path / "webhook.sh"
    script.write_text("set -euo pipefail\n" + _block("webhook", "bash"))
    shell = await asyncio.to_thread(
        subprocess.run,
        ["bash", str(script)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shell.returncode == 0, shell.stderr
    source = json.loads(shell.stdout.splitlines()[0])
    assert re.search(r"^HTTP/1.1 202", shell.stdout, re.MULTILINE), shell.stdout
    inquiry_id = json.loads(shell.stdout.strip().splitlines()[-1])["id"]

    python = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _block("webhook-python", "python")],
        env={**env, "SOURCE_ID": source["id"], "SECRET": source["secret"]},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert python.returncode == 0, python.stderr
    status, answer = python.stdout.strip().split(" ", 1)
    assert status == "202"
    [result] = json.loads(answer)["results"]
    rows = await stored_events(engine, tenant_id, 0)
    deadline = asyncio.get_running_loop().time() + 30
    wanted = {inquiry_id, result["id"]}
    while not wanted <= {str(row.id) for row in rows}:
        assert asyncio.get_running_loop().time() < deadline, "the webhook events were not stored"
        await asyncio.sleep(0.1)
        rows = await stored_events(engine, tenant_id, 0)
    stored = {str(row.id): row for row in rows}
    # Both reached the same person: the inquiry created Mia, the property view found her.
    assert stored[inquiry_id].person_id == stored[result["id"]].person_id is not None


def test_every_setting_is_in_the_configuration_table() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme.split("## Configuration")[1].split("\n## ")[0]
    missing = [n for n in Settings.model_fields if f"`LEADSTREAM_{n.upper()}`" not in table]
    assert not missing, f"settings missing from README's table: {missing}"
