"""How Leadstream's processes are launched and stopped: the API, the worker and Flower.

`leadstream run`, the tests and the bench all start them from these argvs. The Procfile (what a
platform runs in production) is rendered from them too: `procfile()` must equal it, which
tests/ops/test_processes.py checks, so the two cannot drift.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from shared.contract.queues import ACTIVITY_QUEUE, LEADS_QUEUE

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's console scripts: uvicorn, celery, redis-server

API_APP = "ingest_api.app:create_app"
# uvicorn's httptools protocol plus header/body deadlines, a header size cap and a connection
# cap (ingest_api/server.py): the API is safe to expose without a proxy in front.
API_HTTP = "ingest_api.server:GuardedHttpToolsProtocol"
WORKER_APP = "worker.app"


def api_argv(
    *, host: str = "127.0.0.1", port: int | str, app: str = API_APP, factory: bool = True
) -> list[str]:
    """`uvicorn` serving `app` (the intake by default) as production runs it."""
    return [
        "uvicorn",
        app,
        *(["--factory"] if factory else []),
        "--host",
        host,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        API_HTTP,
        "--no-access-log",
    ]


def worker_argv(
    *, concurrency: int | str = 2, node: str | None = None, app: str = WORKER_APP
) -> list[str]:
    """`celery worker` on both queues, leads first; with `node`, a named worker that does not
    sync with others at start (mingle, gossip): a test's or the bench's private worker. `app`:
    a module that wraps the worker's (a test's faults)."""
    argv = [
        "celery",
        "-A",
        app,
        "worker",
        "--queues",
        f"{LEADS_QUEUE},{ACTIVITY_QUEUE}",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
    ]
    if node is not None:
        argv += ["--without-mingle", "--without-gossip", "-n", node]
    return argv


def flower_argv(*, port: int | str) -> list[str]:
    """`leadstream flower`: Flower behind basic auth (from the settings), on 127.0.0.1."""
    return ["leadstream", "flower", f"--port={port}"]


def celery_flower_argv(*, address: str, port: int | str) -> list[str]:
    """Celery's own Flower command; its credentials come from FLOWER_BASIC_AUTH in its
    environment, not its command line, which any local user can read."""
    return ["celery", "-A", WORKER_APP, "flower", f"--address={address}", f"--port={port}"]


def procfile() -> str:
    """The Procfile's text: ports and concurrency from the environment, with defaults."""
    lines = {
        "release": ["leadstream", "migrate"],
        "web": api_argv(
            host="${LEADSTREAM_API_HOST:-127.0.0.1}", port="${LEADSTREAM_API_PORT:-8000}"
        ),
        "worker": worker_argv(concurrency="${LEADSTREAM_WORKER_CONCURRENCY:-2}"),
        "flower": flower_argv(port="${LEADSTREAM_FLOWER_PORT:-5555}"),
    }
    return "".join(f"{name}: {' '.join(argv)}\n" for name, argv in lines.items())


def start(
    argv: list[str],
    *,
    env: dict[str, str],
    log: Path,
    cwd: Path = REPO,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Run `argv` (its program from this venv if there, else from PATH), output to `log`.

    With `new_session`, the child leads its own process group: `stop` then reaches a Celery
    pool's forks too, and a Ctrl-C in the terminal reaches only the parent.
    """
    program = shutil.which(argv[0], path=str(BIN)) or argv[0]
    with log.open("wb") as handle:  # the child keeps its own descriptor
        return subprocess.Popen(  # noqa: S603 - our own programs
            [program, *argv[1:]],
            env=env,
            cwd=cwd,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
        )


def stop(*processes: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM them all, wait, SIGKILL any that linger; safe to call twice.

    A child that leads its own process group is signalled as a group.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        running = [p for p in processes if p.poll() is None]
        for process in running:
            _signal(process, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                continue


def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        if os.getpgid(process.pid) == process.pid:  # our child's own group: only what it started
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)
    except ProcessLookupError:
        pass


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on `host:port` now."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port nobody listens on now (on 127.0.0.1)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    log: Path,
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> None:
    """Poll `ready` until it holds; fail with the log's tail if the process died or time ran out."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{what} did not start:\n{tail}")
        time.sleep(interval)


def worker_ready(log: Path) -> Callable[[], bool]:
    """True once Celery has logged that the worker is consuming."""
    return lambda: b" ready." in log.read_bytes()


def listening(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return False
        return True

    return check
