"""The measured phases: wrk references, and end-to-end bursts sampled until drained."""

import asyncio
import contextlib
import os
import time
from pathlib import Path

import asyncpg
import httpx
import redis.asyncio as aioredis

from bench import procs, profile
from bench.load import Burst, LeadLane, WrkResult, run_wrk_fixed, start_burst
from bench.results import PhaseResult, Reference, Results, Sample, SourceStats
from bench.stack import Stack, asyncpg_args
from ops.processes import REPO
from shared.contract.queues import ACTIVITY_QUEUE, LEADS_QUEUE


def reference(
    url: str,
    s: Stack,
    name: str,
    *,
    pid: int | None = None,
    batch: int = 0,
    script: str = "post.lua",
) -> tuple[Reference, dict[str, profile.Role]]:
    """wrk against `url` (batches of `batch` events if set, `script`'s requests if given);
    with --profile, py-spy on `pid` during the measured run."""
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
        script=script,
        site_key=s.site_key,
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
            script=script,
            site_key=s.site_key,
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
