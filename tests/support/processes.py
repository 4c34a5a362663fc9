"""The test stack's processes: a real Celery worker and the API, started as `ops.processes`
defines them, and stopped."""

import uuid
from dataclasses import dataclass
from pathlib import Path
from subprocess import Popen

import httpx

from ops.processes import (
    BIN,
    REPO,
    WORKER_APP,
    api_argv,
    free_port,
    start,
    stop,
    wait_until,
    worker_argv,
    worker_ready,
)

__all__ = [
    "BIN",
    "REPO",
    "WORKER_APP",
    "ApiProcess",
    "WorkerProcess",
    "free_port",
    "start_api",
    "start_worker",
    "stop",
]


@dataclass
class WorkerProcess:
    process: Popen[bytes]
    log: Path


def start_worker(
    env: dict[str, str], log: Path, *, concurrency: int = 2, app: str = WORKER_APP
) -> WorkerProcess:
    """A real `celery worker` on both queues; returns once it has said it is ready. `app`: the
    worker's, or one with faults injected (`tests.support.faulty_worker`)."""
    argv = worker_argv(concurrency=concurrency, node=f"test-{uuid.uuid4().hex[:6]}@%h", app=app)
    process = start(argv, env=env, log=log)
    wait_until(worker_ready(log), process, log, timeout=60, what="the worker", interval=0.1)
    return WorkerProcess(process, log)


@dataclass
class ApiProcess:
    process: Popen[bytes]
    url: str


def start_api(env: dict[str, str], log: Path) -> ApiProcess:
    """A real `uvicorn ingest_api.app:create_app` on a free port, once /healthz answers."""
    port = free_port()
    process = start(api_argv(port=port), env=env, log=log)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, process, log, timeout=30, what="the API")
    return ApiProcess(process, url)
