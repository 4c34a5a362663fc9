"""One command for issue 3's measurements: `.venv/bin/python -m bench.run [--quick] [--out F]`.

It finds PostgreSQL and Redis (or starts embedded ones), makes a scratch database and uses a
dedicated Redis db, measures the box's limits and the product in the same run, writes a
markdown report with a plot, and removes everything it made, also on failure or Ctrl-C.
"""

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import procs
from bench.limits import pg_copy_sync, redis_lpush
from bench.phases import end_to_end, reference
from bench.plot import plot
from bench.report import markdown
from bench.results import Config, Results, log
from bench.stack import (
    Stack,
    asyncpg_args,
    drop_database,
    flush_redis,
    machine_info,
    make_site_key,
    make_tenant,
    start_uvicorn,
    start_worker,
    wait_api_idle,
)
from ops.local_services import start_services
from ops.processes import API_APP, BIN, REPO
from shared.db.engine import migrate_database
from shared.settings import Settings

__all__ = ["Config", "Results", "main", "run"]

BATCH_REFERENCE_SIZE = 100  # events per request in reference (b2)
# The limiter runs on every request, but one client must never be refused: the references
# measure its cost, not its refusals. b5 turns it off to measure that cost.
RATE_LIMIT_ENV = {
    "LEADSTREAM_RATE_LIMIT_PER_SECOND": "1000000",
    "LEADSTREAM_RATE_LIMIT_BURST": "1000000",
}


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    # SIGTERM must unwind through the same cleanup as Ctrl-C.
    def handler(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def busy_cores(seconds: float = 1.0) -> float:
    busy0, total0 = procs.machine_busy_seconds()
    time.sleep(seconds)
    busy1, total1 = procs.machine_busy_seconds()
    cores = os.cpu_count() or 1
    return cores * (busy1 - busy0) / max(total1 - total0, 1e-9)


def wait_until_quiet(limit: float, threshold: float = 0.3) -> float:
    """Busy cores on the box now; with `limit`, wait up to that long for them to drop."""
    deadline = time.monotonic() + limit
    while True:
        busy = busy_cores()
        if busy <= threshold or time.monotonic() >= deadline:
            break
        log(f"{busy:.2f} cores busy with other work; waiting for quiet")
    if busy > threshold:
        log(f"warning: {busy:.2f} cores busy with other work: every figure will be lower")
    return busy


def run(config: Config) -> Results:
    """The whole bench; every process, database and key it made is gone when it returns."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is needed (apt-get install wrk)")
    results = Results(config=config, machine={}, started=time.time(), load_before=os.getloadavg())
    results.busy_before = wait_until_quiet(config.wait_quiet)
    run_id = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="leadstream-bench-"))
    ok = False
    with ExitStack() as stack:
        stack.callback(
            lambda: (
                shutil.rmtree(workdir, ignore_errors=True)
                if ok and not config.keep_logs
                else log(f"logs kept in {workdir}")
            )
        )
        services = start_services(
            data_dir=REPO / ".data" / "bench",
            database_name=f"leadstream_bench_{run_id}",
            redis_db=config.redis_db,
        )
        stack.callback(services.close)
        # Registered after close(), so it runs before it (an embedded server is still up).
        stack.callback(drop_database, services.database_url)
        stack.callback(flush_redis, services.redis_url)
        flush_redis(services.redis_url)
        log(
            f"PostgreSQL ({services.database_origin}), Redis ({services.redis_origin} "
            f"db {config.redis_db}), logs in {workdir}"
        )
        with results.step("migrate"):
            migrate_database(services.database_url)
        settings = Settings(database_url=services.database_url, redis_url=services.redis_url)
        token = asyncio.run(make_tenant(settings))
        site_key = asyncio.run(make_site_key(settings))
        results.machine = machine_info(services.database_url, services.redis_url)
        env = {
            **os.environ,
            "LEADSTREAM_DATABASE_URL": services.database_url,
            "LEADSTREAM_REDIS_URL": services.redis_url,
            "LEADSTREAM_LOG_LEVEL": config.log_level,
            "LEADSTREAM_LOG_FORMAT": "json",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            **RATE_LIMIT_ENV,
        }
        s = Stack(
            config,
            env,
            workdir,
            services.database_url,
            services.redis_url,
            token,
            run_id,
            site_key=site_key,
        )
        stack.callback(s.stop_extra)

        with results.step("(c) Redis LPUSH"):
            results.lpush_rate = redis_lpush(services.redis_url, config.lpush_messages)
        with results.step("(d) PostgreSQL COPY"):
            results.copy_rate = pg_copy_sync(asyncpg_args(services.database_url), config.copy_rows)
        with results.step("(a) bare FastAPI"), ExitStack() as bare_stack:
            _, bare_url = start_uvicorn(bare_stack, s, "bare", "bench.bare_app:app")
            results.bare, _ = reference(bare_url, s, "bare")
        with results.step("(a2) bare plain ASGI"), ExitStack() as bare_stack:
            _, bare_url = start_uvicorn(bare_stack, s, "bare-asgi", "bench.bare_app:asgi_app")
            results.bare_asgi, _ = reference(bare_url, s, "bare-asgi")
        with results.step("(b) ingest API"):
            s.api, s.api_url = start_uvicorn(stack, s, "api", API_APP, factory=True)
            results.memory["api_idle"] = procs.rss_bytes([s.api.pid])
            results.ingest, results.ingest_profile = reference(
                s.api_url, s, "ingest", pid=s.api.pid
            )
            results.memory["api_after_reference"] = procs.rss_bytes([s.api.pid])
        with results.step("(b5) ingest API, rate limiter off"), ExitStack() as off_stack:
            off = {"LEADSTREAM_RATE_LIMIT_PER_SECOND": "0"}
            _, off_url = start_uvicorn(
                off_stack, s, "api-unlimited", API_APP, factory=True, env=off
            )
            results.ingest_unlimited, _ = reference(off_url, s, "ingest-unlimited")
        with results.step("(b2) ingest API, batches"):
            results.ingest_batch, _ = reference(
                s.api_url, s, "ingest-batch", batch=BATCH_REFERENCE_SIZE
            )
            results.memory["api_after_batch_reference"] = procs.rss_bytes([s.api.pid])
        with results.step("(b3, b4) pixel and beacon, interleaved with runs of (b)"):
            # The doors are compared with POST runs interleaved with theirs, on the same process
            # and an emptied Redis (medians of DOOR_ROUNDS rounds): (b) ran first, on a process
            # and a Redis that (b2) has since loaded, and runs differ by ±10% on a shared box.
            wait_api_idle(s.api_url)
            flush_redis(services.redis_url)
            for n in range(1 if config.quick else DOOR_ROUNDS):
                results.door_reference.append(reference(s.api_url, s, f"ingest-doors-{n}")[0])
                results.pixels.append(reference(s.api_url, s, f"pixel-{n}", script="pixel.lua")[0])
                results.beacons.append(
                    reference(s.api_url, s, f"beacon-{n}", script="beacon.lua")[0]
                )
            # wrk leaves up to -c requests in flight when it stops; the API still queues them.
            wait_api_idle(s.api_url)
            flush_redis(services.redis_url)  # no worker ran: those queued events must not count
        with results.step("worker start"):
            s.worker = start_worker(stack, s)
        with results.step("end to end"):
            asyncio.run(end_to_end(s, results))
        results.load_after = os.getloadavg()
        results.finished = time.time()

        plot(results, config.plot_path)
        config.out.write_text(markdown(results))
        log(f"wrote {config.out} and {config.plot_path}")
        ok = True
    return results


# Rounds of (b), pixel and beacon runs whose medians b3 and b4 compare.
DOOR_ROUNDS = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="~40 s: smaller bursts, shorter runs")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--burst", type=int, help="page views in the burst (default 100k/5k)")
    parser.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="add a paced soak phase of this length (600 = issue 3's soak)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the API and worker during the burst (adds overhead)",
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the processes' logs and wrk/py-spy outputs"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for other work on the box to stop",
    )
    parser.add_argument("--log-level", default="INFO", help="LEADSTREAM_LOG_LEVEL of the stack")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {
        "soak_seconds": args.soak,
        "profile": args.profile,
        "log_level": args.log_level,
        "keep_logs": args.keep_logs,
        "wait_quiet": args.wait_quiet,
        "command": " ".join([".venv/bin/python -m bench.run", *(argv or sys.argv[1:])]),
    }
    if args.burst:
        overrides["burst_events"] = args.burst
    out = args.out.resolve()
    config = Config.quick_mode(out, **overrides) if args.quick else Config(out=out, **overrides)
    with _sigterm_as_interrupt():
        try:
            run(config)
        except KeyboardInterrupt:
            log("interrupted; everything it started was stopped")
            return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
