"""One command for issue 3's measurements: `.venv/bin/python -m bench.run [--quick] [--out F]`.

It finds PostgreSQL and Redis (or starts embedded ones), makes a scratch database and uses a
dedicated Redis db, measures the box's limits and the product in the same run, writes a
markdown report with a plot, and removes everything it made, also on failure or Ctrl-C.
"""

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis
import redis.asyncio as aioredis
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bench import procs, profile
from bench.limits import pg_copy_sync, redis_lpush
from bench.load import Burst, LeadLane, LeadResult, WrkResult, run_wrk_fixed, start_burst
from bench.procs import Child
from ops.local_services import start_services
from shared.auth import ALL_SCOPES, mint_token
from shared.contract.queues import ACTIVITY_QUEUE, LEADS_QUEUE
from shared.db.engine import migrate_database
from shared.db.tenants import ensure_tenant
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BATCH_REFERENCE_SIZE = 100  # events per request in reference (b2)
UVICORN_FLAGS = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--workers", "1"]


@dataclass(frozen=True)
class Config:
    out: Path
    quick: bool = False
    ref_seconds: float = 10.0
    warmup_seconds: float = 2.0
    connections: int = 64
    threads: int = 2
    lpush_messages: int = 200_000
    copy_rows: int = 100_000
    burst_events: int = 100_000
    paced_seconds: float = 15.0
    paced_fraction: float = 0.8
    lead_rate: float = 5.0
    lead_wait: int = 10
    drain_timeout: float = 90.0
    soak_seconds: float = 0.0
    profile: bool = False
    log_level: str = "INFO"
    redis_db: int = 14
    sample_interval: float = 0.5
    command: str = ".venv/bin/python -m bench.run"
    keep_logs: bool = False
    wait_quiet: float = 0.0  # seconds to wait for other work on the box to stop

    @classmethod
    def quick_mode(cls, out: Path, **overrides: Any) -> "Config":
        # Sized to finish in ~40 s: each figure is still measured, just over less time.
        base = cls(
            out=out,
            quick=True,
            ref_seconds=2,
            warmup_seconds=1,
            lpush_messages=20_000,
            copy_rows=10_000,
            burst_events=4_000,
            paced_seconds=2,
            drain_timeout=15,
        )
        return replace(base, **overrides)

    @property
    def plot_path(self) -> Path:
        return self.out.parent / "bench" / f"{self.out.stem.lower()}.png"


@dataclass
class Sample:
    t: float  # seconds since the phase began
    accepted: int  # the API's leadstream_events_accepted_total, all queues
    committed: int  # rows in events
    dead: int  # rows in dead_letters
    activity: int  # messages (not events) waiting in each Celery queue
    leads: int
    unacked: int  # messages a worker holds (kombu's `unacked` hash)
    api_rss: int
    worker_rss: int


@dataclass
class SourceStats:
    """What the database says about one phase's events (tagged by their `source`)."""

    count: int = 0
    ingest_rate: float = 0.0  # events/s between the first and last received_at
    committed_rate: float = 0.0  # events/s between the 10th and 90th percentile created_at
    lag_p50: float = float("nan")
    lag_p95: float = float("nan")
    lag_p99: float = float("nan")
    lag_max: float = float("nan")


@dataclass
class PhaseResult:
    name: str
    source: str
    offered_rate: float  # 0 = as fast as the API answers
    wrk: WrkResult
    samples: list[Sample]
    drained: bool
    seconds: float
    cpu: dict[str, float]  # CPU seconds per process group during the phase
    db: SourceStats
    leads: list[LeadResult] = field(default_factory=list)
    lead_db: SourceStats | None = None
    batches: dict[str, float] = field(default_factory=dict)
    profiles: dict[str, dict[str, profile.Role]] = field(default_factory=dict)
    sent_done_t: float = float("nan")  # when wrk had all its answers (seconds into the phase)

    @property
    def drain_rate(self) -> float:
        """Committed events/s after the last request: the worker alone, the API idle."""
        after = [x for x in self.samples if x.t >= self.sent_done_t]
        if len(after) < 3 or after[-1].t - after[0].t < 2:
            return float("nan")
        return (after[-1].committed - after[0].committed) / (after[-1].t - after[0].t)


@dataclass
class Reference:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    client_cpu: float
    events_per_request: int = 1


@dataclass
class Results:
    config: Config
    machine: dict[str, str]
    started: float
    finished: float = 0.0
    lpush_rate: float = 0.0
    copy_rate: float = 0.0
    bare: Reference | None = None
    bare_asgi: Reference | None = None
    ingest: Reference | None = None
    ingest_batch: Reference | None = None
    phases: list[PhaseResult] = field(default_factory=list)
    memory: dict[str, int] = field(default_factory=dict)
    accepted_total: int = 0
    committed_total: int = 0
    dead_total: int = 0
    reference_leftovers: int = 0  # events of run (b) that reached the worker: should be 0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    busy_before: float = 0.0  # cores busy with other work just before the run
    all_batches: dict[str, float] = field(default_factory=dict)  # every message of the run
    timings: dict[str, float] = field(default_factory=dict)  # wall seconds per step
    ingest_profile: dict[str, profile.Role] = field(default_factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        log(f"{name}...")
        started = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = time.monotonic() - started


# Services and fixtures ------------------------------------------------------------------------


def asyncpg_args(database_url: str, database: str | None = None) -> dict[str, Any]:
    """asyncpg.connect() keywords for a SQLAlchemy URL (TCP, or a socket dir in ?host=)."""
    url = make_url(database_url)
    host = url.query.get("host")
    return {
        "host": host if isinstance(host, str) else (url.host or "127.0.0.1"),
        "port": url.port or 5432,
        "user": url.username or "postgres",
        "password": url.password,
        "database": database or url.database,
    }


async def _drop_database(database_url: str) -> None:
    name = make_url(database_url).database
    conn = await asyncpg.connect(**asyncpg_args(database_url, "postgres"), timeout=10)
    try:
        quoted = (name or "").replace('"', '""')
        await conn.execute(f'DROP DATABASE IF EXISTS "{quoted}" WITH (FORCE)')
    finally:
        await conn.close()


def drop_database(database_url: str) -> None:
    try:
        asyncio.run(_drop_database(database_url))
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"bench: could not drop the bench database: {exc!r}", file=sys.stderr)


def flush_redis(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        client.flushdb()
    finally:
        client.close()


async def make_tenant(settings: Settings) -> str:
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            tenant_id = await ensure_tenant(conn, name="bench", default_region="US")
    finally:
        await engine.dispose()
    return mint_token(settings, tenant_id=tenant_id, scopes=ALL_SCOPES, ttl_seconds=24 * 3600)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else "?"


def machine_info(database_url: str, redis_url: str) -> dict[str, str]:
    from importlib.metadata import version

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        mem = f"{kib / 1024 / 1024:.1f} GiB"

    async def pg_version() -> str:
        conn = await asyncpg.connect(**asyncpg_args(database_url), timeout=10)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    client = redis.Redis.from_url(redis_url)
    try:
        redis_version = str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()
    commit = _version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = _version(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    packages = ", ".join(
        f"{name} {version(name)}"
        for name in ("fastapi", "uvicorn", "pydantic", "celery", "redis", "asyncpg", "sqlalchemy")
    )
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "postgresql": asyncio.run(pg_version()),
        "redis": redis_version,
        "wrk": _version(["wrk", "--version"]).split(" [")[0],
        "packages": packages,
        "commit": commit + (" (with uncommitted changes)" if dirty not in ("", "?") else ""),
    }


# Processes --------------------------------------------------------------------------------------


@dataclass
class Stack:
    """What the e2e phases need: service URLs, the token, and the running processes."""

    config: Config
    env: dict[str, str]
    workdir: Path
    database_url: str
    redis_url: str
    token: str
    run_id: str
    api: Child | None = None
    api_url: str = ""
    worker: Child | None = None
    extra: list[Child] = field(default_factory=list)  # wrk, py-spy: stopped on any exit

    def stop_extra(self) -> None:
        for child in self.extra:
            procs.stop(child, timeout=5)


def start_uvicorn(stack: ExitStack, s: Stack, name: str, target: list[str]) -> tuple[Child, str]:
    port = procs.free_port()
    child = procs.spawn(
        name,
        [str(BIN / "uvicorn"), *target, "--host", "127.0.0.1", "--port", str(port), *UVICORN_FLAGS],
        env=s.env,
        cwd=REPO,
        log=s.workdir / f"{name}.log",
    )
    stack.callback(procs.stop, child)
    procs.wait_for_port(child, port, timeout=30)
    return child, f"http://127.0.0.1:{port}"


def start_worker(stack: ExitStack, s: Stack) -> Child:
    child = procs.spawn(
        "worker",
        [
            str(BIN / "celery"),
            "-A",
            "worker.app",
            "worker",
            "--queues",
            f"{LEADS_QUEUE},{ACTIVITY_QUEUE}",
            "--concurrency",
            "2",
            "--loglevel",
            "INFO",
            "--without-mingle",
            "--without-gossip",
            "-n",
            f"bench-{s.run_id}@%h",
        ],
        env=s.env,
        cwd=REPO,
        log=s.workdir / "worker.log",
    )
    stack.callback(procs.stop, child)
    deadline = time.monotonic() + 60
    while b" ready." not in child.log.read_bytes():
        if not child.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start:\n{child.tail()}")
        time.sleep(0.1)
    return child


def wait_api_idle(api_url: str, timeout: float = 15.0) -> None:
    """Until the accepted counter stops moving: no request of a finished wrk is still queuing."""

    def accepted() -> float:
        text = httpx.get(f"{api_url}/metrics", timeout=5).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("leadstream_events_accepted_total{")
        )

    deadline = time.monotonic() + timeout
    last = accepted()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = accepted()
        if now == last:
            return
        last = now


def reference(
    url: str, s: Stack, name: str, *, pid: int | None = None, batch: int = 0
) -> tuple[Reference, dict[str, profile.Role]]:
    """wrk against `url` (batches of `batch` events if set); with --profile, py-spy on `pid`
    during the measured run."""
    cfg = s.config
    run_wrk_fixed(
        url,
        seconds=cfg.warmup_seconds,
        connections=cfg.connections,
        threads=cfg.threads,
        token=s.token,
        workdir=s.workdir,
        name=f"{name}-warmup",
        batch=batch,
    )
    spy = profile.start(s.workdir, s.env, name, pid) if cfg.profile and pid else None
    if spy is not None:
        s.extra.append(spy.child)
    try:
        result = run_wrk_fixed(
            url,
            seconds=cfg.ref_seconds,
            connections=cfg.connections,
            threads=cfg.threads,
            token=s.token,
            workdir=s.workdir,
            name=name,
            batch=batch,
        )
    finally:
        roles = profile.stop(spy) if spy is not None else {}
    d = result.data
    errors = sum(
        int(d[k])
        for k in ("status_errors", "connect_errors", "read_errors", "write_errors", "timeouts")
    )
    ref = Reference(
        result.rps,
        result.ms("p50_us"),
        result.ms("p99_us"),
        errors,
        result.cpu_seconds,
        events_per_request=batch or 1,
    )
    return ref, roles


# Sampling ---------------------------------------------------------------------------------------


class Probe:
    """Reads the counters every sample: API metrics, row counts, queue lengths, RSS."""

    def __init__(self, s: Stack) -> None:
        self.s = s
        self.http = httpx.AsyncClient(base_url=s.api_url, timeout=10)
        self.redis = aioredis.Redis.from_url(s.redis_url)
        self.pg: asyncpg.Connection | None = None
        self.offset = 0  # accepted before the worker ran (reference b), flushed, never stored

    async def __aenter__(self) -> "Probe":
        self.pg = await asyncpg.connect(**asyncpg_args(self.s.database_url), timeout=10)
        self.offset = await self.accepted()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.aclose()
        await self.redis.aclose()
        if self.pg is not None:
            await self.pg.close()

    async def accepted(self) -> int:
        text = (await self.http.get("/metrics")).text
        return int(
            sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("leadstream_events_accepted_total{")
            )
        )

    async def sample(self, t0: float) -> Sample:
        assert self.pg is not None and self.s.api is not None and self.s.worker is not None
        accepted = await self.accepted() - self.offset
        row = await self.pg.fetchrow(
            "SELECT (SELECT count(*) FROM events) AS events, "
            "(SELECT count(*) FROM dead_letters) AS dead"
        )
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(ACTIVITY_QUEUE)
        pipe.llen(LEADS_QUEUE)
        pipe.hlen("unacked")
        activity, leads, unacked = await pipe.execute()
        return Sample(
            t=time.monotonic() - t0,
            accepted=accepted,
            committed=int(row["events"]),
            dead=int(row["dead"]),
            activity=int(activity),
            leads=int(leads),
            unacked=int(unacked),
            api_rss=procs.rss_bytes(procs.tree(self.s.api.pid)),
            worker_rss=procs.rss_bytes(procs.tree(self.s.worker.pid)),
        )

    async def source_stats(self, source: str) -> SourceStats:
        assert self.pg is not None
        row = await self.pg.fetchrow(
            """
            WITH e AS (
                SELECT received_at, created_at,
                       extract(epoch FROM created_at - received_at) AS lag
                FROM events WHERE source = $1
            )
            SELECT count(*) AS n,
                   extract(epoch FROM max(received_at) - min(received_at)) AS received_span,
                   extract(epoch FROM percentile_disc(0.9) WITHIN GROUP (ORDER BY created_at)
                                    - percentile_disc(0.1) WITHIN GROUP (ORDER BY created_at))
                       AS created_span,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
                   percentile_cont(0.95) WITHIN GROUP (ORDER BY lag) AS p95,
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99,
                   max(lag) AS lag_max
            FROM e
            """,
            source,
        )
        n = int(row["n"])
        if n == 0:
            return SourceStats()
        received = float(row["received_span"] or 0)
        created = float(row["created_span"] or 0)
        return SourceStats(
            count=n,
            ingest_rate=n / received if received > 0 else float("nan"),
            committed_rate=0.8 * n / created if created > 0 else float("nan"),
            lag_p50=float(row["p50"]),
            lag_p95=float(row["p95"]),
            lag_p99=float(row["p99"]),
            lag_max=float(row["lag_max"]),
        )


def cpu_snapshot(s: Stack) -> dict[str, float]:
    assert s.api is not None and s.worker is not None
    busy, total = procs.machine_busy_seconds()
    own = os.times()
    return {
        "api": procs.cpu_seconds(procs.tree(s.api.pid)),
        # Celery's consumer (fetches, acks, task events) apart from the pool that runs tasks.
        "consumer": procs.cpu_seconds([s.worker.pid]),
        "pool": procs.cpu_seconds(procs.children_of(s.worker.pid)),
        "postgres": procs.cpu_seconds(procs.pids_named("postgres")),
        "redis": procs.cpu_seconds(procs.pids_named("redis-server")),
        "bench": own.user + own.system,
        "machine_busy": busy,
        "machine_total": total,
    }


def worker_batches(log: Path, since: int) -> tuple[dict[str, float], int]:
    """Batch sizes and durations from the worker's `batch.processed` lines after byte `since`."""
    import orjson

    raw = log.read_bytes()
    sizes, millis = [], []
    for line in raw[since:].splitlines():
        if b"batch.processed" not in line:
            continue
        with contextlib.suppress(orjson.JSONDecodeError):
            record = orjson.loads(line[line.find(b"{") :])
            sizes.append(int(record["events"]))
            millis.append(float(record["ms"]))
    if not sizes:
        return {}, len(raw)
    ordered = sorted(millis)
    # Least squares ms = fixed + per_event * events: what a message costs whatever it carries.
    n, mean_x, mean_y = len(sizes), sum(sizes) / len(sizes), sum(millis) / len(millis)
    var = sum((x - mean_x) ** 2 for x in sizes)
    slope = (
        sum((x - mean_x) * (y - mean_y) for x, y in zip(sizes, millis, strict=True)) / var
        if var > 0
        else float("nan")
    )
    fit = {"fixed_ms": mean_y - slope * mean_x, "per_event_ms": slope} if n > 2 else {}
    return {
        **fit,
        "batches": len(sizes),
        "events": sum(sizes),
        "mean_events": sum(sizes) / len(sizes),
        "max_events": max(sizes),
        "mean_ms": sum(millis) / len(millis),
        "p95_ms": ordered[int(0.95 * (len(ordered) - 1))],
        "busy_s": sum(millis) / 1000,
    }, len(raw)


# End-to-end phases --------------------------------------------------------------------------


async def run_phase(
    s: Stack,
    probe: Probe,
    *,
    name: str,
    source: str,
    total: int,
    rate: float,
    leads: bool = False,
) -> PhaseResult:
    """Fire `total` page views (at `rate`/s, 0 = flat out), sample until the worker drained."""
    cfg = s.config
    assert s.worker is not None and s.api is not None
    loop = asyncio.get_running_loop()
    expected = total / rate if rate > 0 else total / 500  # generous: 500 req/s is a slow API
    max_seconds = expected * 1.5 + 10
    log_offset = s.worker.log.stat().st_size
    profiles = (
        [
            profile.start(s.workdir, s.env, f"{name}-worker", s.worker.pid, pool=True, idle=True),
            profile.start(s.workdir, s.env, f"{name}-api", s.api.pid),
        ]
        if cfg.profile
        else []
    )
    s.extra.extend(p.child for p in profiles)
    cpu0 = cpu_snapshot(s)
    t0 = time.monotonic()
    base = await probe.sample(t0)
    burst: Burst = start_burst(
        f"{s.api_url}",
        total=total,
        rate=rate,
        connections=cfg.connections,
        threads=cfg.threads,
        token=s.token,
        source=source,
        run_id=f"{s.run_id}-{name}",
        max_seconds=max_seconds,
        workdir=s.workdir,
        cwd=REPO,
    )
    s.extra.append(burst.child)
    lane = LeadLane(s.api_url, s.token, cfg.lead_rate, cfg.lead_wait, s.run_id)
    stop_leads = asyncio.Event()
    lane_task = asyncio.create_task(lane.run(stop_leads)) if leads else None
    samples = [base]
    wrk: WrkResult | None = None
    sent_done_t = float("nan")
    drained = False
    deadline = t0 + max_seconds + cfg.drain_timeout
    try:
        while True:
            tick = loop.time()
            sample = await probe.sample(t0)
            samples.append(sample)
            if wrk is None and burst.finished():
                sent_done_t = sample.t
                wrk = await asyncio.to_thread(burst.finish, 15)
            if wrk is not None and _drained(sample):
                stop_leads.set()  # the leads ride along the burst, not after it
                if lane_task is None or lane_task.done():
                    drained = True
                    break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(max(0.0, cfg.sample_interval - (loop.time() - tick)))
    finally:
        ended, cpu1 = time.monotonic(), cpu_snapshot(s)
        stop_leads.set()
        lead_results = await lane_task if lane_task is not None else []
        if wrk is None:
            wrk = await asyncio.to_thread(burst.finish, 0)
        summaries = {p.label.split("-", 1)[1]: profile.stop(p) for p in profiles}
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    cpu["wrk"] = wrk.cpu_seconds
    batches, _ = worker_batches(s.worker.log, log_offset)
    return PhaseResult(
        name=name,
        source=source,
        offered_rate=rate,
        wrk=wrk,
        samples=samples,
        drained=drained,
        seconds=ended - t0,
        cpu=cpu,
        db=await probe.source_stats(source),
        leads=lead_results,
        lead_db=await probe.source_stats("bench-lead") if leads else None,
        batches=batches,
        profiles=summaries,
        sent_done_t=sent_done_t,
    )


def _drained(sample: Sample) -> bool:
    return (
        sample.activity == 0
        and sample.leads == 0
        and sample.unacked == 0
        and sample.committed + sample.dead >= sample.accepted
    )


async def end_to_end(s: Stack, results: Results) -> None:
    cfg = s.config
    assert s.api is not None and s.worker is not None
    async with Probe(s) as probe:
        first = await probe.sample(time.monotonic())
        results.memory["api_e2e_start"] = first.api_rss
        results.memory["worker_start"] = first.worker_rss
        burst = await run_phase(
            s,
            probe,
            name="burst",
            source="bench-burst",
            total=cfg.burst_events,
            rate=0,
            leads=True,
        )
        results.phases.append(burst)
        sustained = burst.db.committed_rate
        if not sustained or sustained != sustained:  # NaN: too few batches to tell
            sustained = burst.db.count / max(burst.seconds, 1e-6)

        async def paced(name: str, rate: float, seconds: float) -> None:
            results.phases.append(
                await run_phase(
                    s,
                    probe,
                    name=name,
                    source=f"bench-{name}",
                    total=max(1, round(rate * seconds)),
                    rate=rate,
                )
            )

        await paced("paced", max(50.0, cfg.paced_fraction * sustained), cfg.paced_seconds)
        if cfg.soak_seconds > 0:
            # A soak must be sustainable, or it measures an ever-growing backlog. A slow steady
            # rate arrives as a few events per message, so: half of what 2 pool processes manage
            # with one-event messages at the per-message cost fitted so far (conservative).
            fit, _ = worker_batches(s.worker.log, 0)
            one_event_ms = fit.get("fixed_ms", float("nan")) + fit.get("per_event_ms", 0.0)
            capacity = 2000 / one_event_ms if one_event_ms > 1 else 100.0
            await paced("soak", max(10.0, 0.5 * capacity), cfg.soak_seconds)
        # Anything a phase left undrained (it hit its time bound) gets one more bounded wait.
        last = await probe.sample(time.monotonic())
        deadline = time.monotonic() + cfg.drain_timeout
        while not _drained(last) and time.monotonic() < deadline:
            await asyncio.sleep(cfg.sample_interval)
            last = await probe.sample(time.monotonic())
        results.all_batches, _ = worker_batches(s.worker.log, 0)
        results.reference_leftovers = (await probe.source_stats("bench-ref")).count
        results.memory["api_end"] = last.api_rss
        results.memory["worker_end"] = last.worker_rss
        results.accepted_total = last.accepted
        results.committed_total = last.committed
        results.dead_total = last.dead


# The run ------------------------------------------------------------------------------------


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


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


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
        results.machine = machine_info(services.database_url, services.redis_url)
        env = {
            **os.environ,
            "LEADSTREAM_DATABASE_URL": services.database_url,
            "LEADSTREAM_REDIS_URL": services.redis_url,
            "LEADSTREAM_LOG_LEVEL": config.log_level,
            "LEADSTREAM_LOG_FORMAT": "json",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        s = Stack(config, env, workdir, services.database_url, services.redis_url, token, run_id)
        stack.callback(s.stop_extra)

        with results.step("(c) Redis LPUSH"):
            results.lpush_rate = redis_lpush(services.redis_url, config.lpush_messages)
        with results.step("(d) PostgreSQL COPY"):
            results.copy_rate = pg_copy_sync(asyncpg_args(services.database_url), config.copy_rows)
        with results.step("(a) bare FastAPI"), ExitStack() as bare_stack:
            _, bare_url = start_uvicorn(bare_stack, s, "bare", ["bench.bare_app:app"])
            results.bare, _ = reference(bare_url, s, "bare")
        with results.step("(a2) bare plain ASGI"), ExitStack() as bare_stack:
            _, bare_url = start_uvicorn(bare_stack, s, "bare-asgi", ["bench.bare_app:asgi_app"])
            results.bare_asgi, _ = reference(bare_url, s, "bare-asgi")
        with results.step("(b) ingest API"):
            s.api, s.api_url = start_uvicorn(
                stack, s, "api", ["ingest_api.app:create_app", "--factory"]
            )
            results.memory["api_idle"] = procs.rss_bytes([s.api.pid])
            results.ingest, results.ingest_profile = reference(
                s.api_url, s, "ingest", pid=s.api.pid
            )
            results.memory["api_after_reference"] = procs.rss_bytes([s.api.pid])
        with results.step("(b2) ingest API, batches"):
            results.ingest_batch, _ = reference(
                s.api_url, s, "ingest-batch", batch=BATCH_REFERENCE_SIZE
            )
            results.memory["api_after_batch_reference"] = procs.rss_bytes([s.api.pid])
            # wrk leaves up to -c requests in flight when it stops; the API still queues them.
            wait_api_idle(s.api_url)
            flush_redis(services.redis_url)  # no worker ran: those queued events must not count
        with results.step("worker start"):
            s.worker = start_worker(stack, s)
        with results.step("end to end"):
            asyncio.run(end_to_end(s, results))
        results.load_after = os.getloadavg()
        results.finished = time.time()

        from bench.report import write_report

        write_report(results)
        log(f"wrote {config.out} and {config.plot_path}")
        ok = True
    return results


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
