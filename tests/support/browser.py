"""Headless Chromium (Debian's package) for tests of what a browser shows and does."""

import json
import select
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


# A real page session (the snippet's tests): playwright-core from npm drives the same Chromium.
PLAYWRIGHT_CORE = "playwright-core@1.65.2"
_NODE_DIR = Path(__file__).resolve().parents[2] / ".data" / "node"
_DRIVER = Path(__file__).with_name("browse.cjs")


def find_playwright_core() -> Path:
    """playwright-core's directory, installed with npm into .data/node on first use; skips the
    test if npm cannot install it."""
    installed = _NODE_DIR / "node_modules" / "playwright-core"
    if not (installed / "package.json").exists():
        if shutil.which("npm") is None and shutil.which("apt-get"):
            for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "npm"]):
                subprocess.run(step, capture_output=True, timeout=600, check=False)
        if shutil.which("npm") is None:
            pytest.skip("no npm to install playwright-core: `apt-get install npm` failed here")
        _NODE_DIR.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "install", "--no-save", "--no-audit", "--no-fund", PLAYWRIGHT_CORE],
            cwd=_NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0 or not (installed / "package.json").exists():
            pytest.skip(f"npm could not install {PLAYWRIGHT_CORE}: {done.stderr[-500:]}")
    return installed


class Page:
    """One page of a headless Chromium, driven through tests/support/browse.cjs."""

    def __init__(self, chromium: str, playwright_core: Path) -> None:
        self._process = subprocess.Popen(
            ["node", str(_DRIVER), str(playwright_core), chromium],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._read(timeout=60)  # {"ready": true}, once the browser has started

    def _read(self, timeout: float) -> Any:
        assert self._process.stdout is not None
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"the browser did not answer within {timeout}s")
        answer = json.loads(self._process.stdout.readline() or '{"error": "the driver exited"}')
        if "error" in answer:
            raise AssertionError(f"the browser: {answer['error']}")
        return answer.get("value")

    def _do(self, command: str, timeout: float = 60, **fields: str) -> Any:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps({"do": command, **fields}) + "\n")
        self._process.stdin.flush()
        return self._read(timeout)

    def goto(self, url: str) -> None:
        """Open `url` and return once it has loaded and its snippet has run."""
        self._do("goto", url=url)

    def evaluate(self, js: str) -> Any:
        return self._do("evaluate", js=js)

    def cookies(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self._do("cookies")
        return found

    def requests(self) -> list[dict[str, Any]]:
        """Every request the page made so far: method, url, type (a resource type), body."""
        made: list[dict[str, Any]] = self._do("requests")
        return made

    def errors(self) -> list[str]:
        """Uncaught errors of the page's scripts."""
        raised: list[str] = self._do("errors")
        return raised

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.write('{"do": "quit"}\n')
            self._process.stdin.flush()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


@contextmanager
def open_page(chromium: str, playwright_core: Path) -> Iterator[Page]:
    page = Page(chromium, playwright_core)
    try:
        yield page
    finally:
        page.close()
