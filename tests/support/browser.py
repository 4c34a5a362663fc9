"""Headless Chromium (Debian's package) for tests of what a browser shows."""

import shutil
import subprocess
from pathlib import Path

import pytest

# Without these, Chromium tries to reach Google's services at start; this network has none.
_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def find_chromium() -> str:
    """Chromium's path, installed from Debian's packages if missing; skips the test if it can't."""
    found = shutil.which("chromium")
    if found is None and shutil.which("apt-get"):
        for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            subprocess.run(step, capture_output=True, timeout=600, check=False)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("no Chromium: `apt-get install chromium` failed or is not available here")
    return found


def render(chromium: str, url: str, profile: Path, *, screenshot: Path | None = None) -> str:
    """The page's DOM once its scripts have run (virtual time: no sleeps), optionally a PNG."""
    wait = ["--virtual-time-budget=15000", f"--user-data-dir={profile}"]
    if screenshot is not None:
        subprocess.run(
            [
                chromium,
                *_FLAGS,
                *wait,
                "--window-size=1280,1400",
                f"--screenshot={screenshot}",
                url,
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    return subprocess.run(
        [chromium, *_FLAGS, *wait, "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
