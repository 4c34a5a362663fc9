"""Load generators: wrk for the firehose (C, so the client costs little of the 2 cores), and an
asyncio httpx client for the lead lane, which needs each request's own latency."""

import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.procs import Child, stop

LUA = Path(__file__).resolve().parent / "lua"
EVENTS_PATH = "/api/partner/events"


@dataclass
class WrkResult:
    data: dict[str, Any]
    wall_seconds: float
    cpu_seconds: float  # what wrk itself burnt: the client's share of the 2 cores

    @property
    def rps(self) -> float:
        return float(self.data["requests"]) / (float(self.data["duration_us"]) / 1e6)

    def ms(self, key: str) -> float:
        return float(self.data[key]) / 1000


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _parse(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            parsed: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            return parsed
    raise RuntimeError(f"wrk printed no result:\n{stdout[-2000:]}")


def _wrk_argv(
    url: str, script: str, *, seconds: float, connections: int, threads: int
) -> list[str]:
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "30s",
        "-s",
        str(LUA / script),
        url,
    ]


def run_wrk_fixed(
    url: str,
    *,
    seconds: float,
    connections: int,
    threads: int,
    token: str,
    workdir: Path,
    name: str,
    batch: int = 0,
    script: str = "post.lua",
    site_key: str = "",
) -> WrkResult:
    """A fixed-duration closed loop of identical POSTs (references a and b), of identical
    batches of `batch` events (b2), or of `script`'s requests (the pixel's, the beacon's)."""
    env = {
        **os.environ,
        "BENCH_TOKEN": token,
        "BENCH_BATCH": str(batch),
        "BENCH_SITE_KEY": site_key,
    }
    out = workdir / f"{name}.out"
    started, cpu0 = time.monotonic(), _children_cpu()
    with out.open("wb") as handle:
        subprocess.run(
            _wrk_argv(url, script, seconds=seconds, connections=connections, threads=threads),
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=seconds + 60,
        )
    return WrkResult(_parse(out.read_text()), time.monotonic() - started, _children_cpu() - cpu0)


@dataclass
class Burst:
    """A wrk burst running in the background; `finish()` waits for it and parses the result."""

    child: Child
    threads: int
    started: float
    cpu0: float
    err: Path

    def done_threads(self) -> int:
        try:
            return self.err.read_text(errors="replace").count("BENCH_THREAD_DONE")
        except OSError:
            return 0

    def finished(self) -> bool:
        return self.done_threads() >= self.threads or not self.child.alive()

    def finish(self, timeout: float) -> WrkResult:
        deadline = time.monotonic() + timeout
        while not self.finished() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.child.alive():
            # SIGINT is wrk's "stop now and print the summary"; its -d is only the upper bound.
            os.killpg(self.child.pid, signal.SIGINT)
            try:
                self.child.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stop(self.child)
        wall = time.monotonic() - self.started
        data = _parse(self.child.log.read_text(errors="replace"))
        return WrkResult(data, wall, _children_cpu() - self.cpu0)


def start_burst(
    url: str,
    *,
    total: int,
    rate: float,
    connections: int,
    threads: int,
    token: str,
    source: str,
    run_id: str,
    max_seconds: float,
    workdir: Path,
    cwd: Path,
) -> Burst:
    env = {
        **os.environ,
        "BENCH_TOKEN": token,
        "BENCH_TOTAL": str(total),
        "BENCH_RATE": str(rate),
        "BENCH_THREADS": str(threads),
        "BENCH_SOURCE": source,
        "BENCH_RUN": run_id,
    }
    argv = _wrk_argv(
        url, "burst.lua", seconds=max_seconds, connections=connections, threads=threads
    )
    err = workdir / f"{source}.err"
    # wrk's stderr carries the per-thread "done" lines; stdout the summary.
    with err.open("wb") as err_handle, (workdir / f"{source}.out").open("wb") as out_handle:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=out_handle,
            stderr=err_handle,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    child = Child(source, proc, workdir / f"{source}.out")
    return Burst(child, threads, time.monotonic(), _children_cpu(), err)


@dataclass
class LeadResult:
    sent_at: float  # seconds since the lane started
    latency: float  # seconds; NaN when the request failed outright
    status: int  # 0 when the request failed outright


@dataclass
class LeadLane:
    """form_submission events at a fixed rate with `Prefer: wait`, each with a new e-mail."""

    base_url: str
    token: str
    rate: float
    wait: int
    run_id: str
    results: list[LeadResult] = field(default_factory=list)

    async def run(self, stop_event: asyncio.Event) -> list[LeadResult]:
        loop = asyncio.get_running_loop()
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        headers = {"Authorization": f"Bearer {self.token}", "Prefer": f"wait={self.wait}"}
        async with httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=self.wait + 20, limits=limits
        ) as http:
            start = loop.time()
            pending: list[asyncio.Task[LeadResult]] = []
            i = 0
            # Open loop: a slow answer must not lower the offered rate.
            while not stop_event.is_set():
                pending.append(asyncio.create_task(self._one(http, i, loop.time() - start)))
                i += 1
                delay = start + i / self.rate - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop_event.wait(), delay)
            self.results = list(await asyncio.gather(*pending))
        return self.results

    async def _one(self, http: httpx.AsyncClient, i: int, sent_at: float) -> LeadResult:
        body = {
            "type": "form_submission",
            "source": "bench-lead",
            "person": {
                "firstName": "Lead",
                "lastName": f"N{i}",
                "emails": [f"lead-{self.run_id}-{i}@example.com"],
            },
            "message": "I would like to see this home on Saturday.",
        }
        started = time.perf_counter()
        try:
            response = await http.post(EVENTS_PATH, json=body)
        except httpx.HTTPError:
            return LeadResult(sent_at, float("nan"), 0)
        return LeadResult(sent_at, time.perf_counter() - started, response.status_code)
