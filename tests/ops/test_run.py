"""`leadstream run` as a newcomer meets it: on embedded servers, the README walk-through works
with nothing but the commands it shows, and closing the terminal stops everything."""

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from ops.local_services import RUNNING_FILE
from ops.processes import BIN, free_port, listening, port_is_free, wait_until
from tests.support.processes import REPO
from tests.support.walkthrough import check_walkthrough, run_walkthrough


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str], Path]]:
    """`leadstream run` forced onto embedded servers, in a session of its own as a terminal's."""
    data = tmp_path / "data"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LEADSTREAM_", "CELERY_"))  # as a newcomer's shell: nothing set
    }
    env |= {
        "LEADSTREAM_SERVICES": "embedded",
        "LEADSTREAM_DATA_DIR": str(data),
        "LEADSTREAM_API_PORT": str(free_port()),
        "LEADSTREAM_FLOWER_PORT": str(free_port()),
        "LEADSTREAM_WORKER_CONCURRENCY": "1",
    }
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        run = subprocess.Popen(
            [str(BIN / "leadstream"), "run"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        port = int(env["LEADSTREAM_API_PORT"])
        wait_until(listening(port), run, log, timeout=180, what="leadstream run")
        wait_until(lambda: b" ready." in log.read_bytes(), run, log, timeout=60, what="worker")
        yield run, env, log
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


def test_walkthrough_on_embedded_servers_then_sighup_stops_everything(
    stack: tuple[subprocess.Popen[bytes], dict[str, str], Path], tmp_path: Path
) -> None:
    run, env, log = stack
    api = f"http://127.0.0.1:{env['LEADSTREAM_API_PORT']}"
    assert httpx.get(f"{api}/readyz", timeout=5).status_code == 200
    started = log.read_text()
    assert "PostgreSQL (embedded): postgresql+asyncpg://" in started
    assert "Redis (embedded): redis://127.0.0.1:" in started
    descendants = psutil.Process(run.pid).children(recursive=True)
    assert len(descendants) >= 4  # honcho, uvicorn, celery and its pool, flower

    # The walk-through's commands find the servers by themselves: no URL in the environment.
    path = f"{BIN}:{os.environ['PATH']}"
    result = run_walkthrough({**env, "LEADSTREAM_URL": api, "PATH": path}, tmp_path)
    check_walkthrough(result)

    stop_and_check(stack, signal.SIGHUP, descendants)  # the terminal closes


def test_sigterm_stops_everything(
    stack: tuple[subprocess.Popen[bytes], dict[str, str], Path],
) -> None:
    descendants = psutil.Process(stack[0].pid).children(recursive=True)
    stop_and_check(stack, signal.SIGTERM, descendants)  # a supervisor stops it


def stop_and_check(
    stack: tuple[subprocess.Popen[bytes], dict[str, str], Path],
    sig: signal.Signals,
    descendants: list[psutil.Process],
) -> None:
    run, env, log = stack
    os.killpg(run.pid, sig)
    assert run.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert not [p.pid for p in descendants if p.is_running() and p.status() != "zombie"]
    data = env["LEADSTREAM_DATA_DIR"]
    leftovers = [
        p.info["cmdline"]
        for p in psutil.process_iter(["cmdline"])
        if data in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftovers  # the embedded PostgreSQL and Redis stopped too
    for port in (env["LEADSTREAM_API_PORT"], env["LEADSTREAM_FLOWER_PORT"]):
        assert port_is_free("127.0.0.1", int(port))
    assert not (Path(data) / RUNNING_FILE).exists()
