"""The README's walk-through: the script as written, and what its output must show."""

import json
import re
import subprocess
from pathlib import Path

from tests.support.processes import REPO


def walkthrough() -> str:
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- walkthrough:start -->")[1].split("<!-- walkthrough:end -->")[0]
    return block.split("```bash")[1].split("```")[0]


def run_walkthrough(env: dict[str, str], workdir: Path) -> subprocess.CompletedProcess[str]:
    """The block, run by bash as a reader would paste it (failing at its first error)."""
    script = workdir / "walkthrough.sh"
    script.write_text("set -euo pipefail\n" + walkthrough())
    return subprocess.run(
        ["bash", str(script)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def check_walkthrough(result: subprocess.CompletedProcess[str]) -> None:
    """Each step answered as the README says."""
    assert result.returncode == 0, result.stderr
    out = result.stdout
    statuses = re.findall(r"^HTTP/1.1 (\d{3})", out, re.MULTILINE)
    assert statuses[:3] == ["202", "201", "200"], out
    assert statuses[3] in {"200", "202"}
    assert statuses[4] == "202"
    batch = json.loads(out[out.index('{"results":') :].splitlines()[0])
    assert [r["status"] for r in batch["results"]] == ["queued", "rejected", "queued"]
    assert statuses[5] == "200"
    timeline = json.loads(out[out.index('{"events":') :].splitlines()[0])
    # Steps 1-3 are stored by now (2 and 3 waited; 1 before 2); step 4's may still be queued.
    assert {e["eventType"] for e in timeline["events"]} >= {"form_submission", "property_view"}
    assert '"wasPersonCreated":true' in out
    assert '"wasCompanyCreated":false' in out
