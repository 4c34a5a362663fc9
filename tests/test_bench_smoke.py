"""The benchmark still runs end to end: a tiny run of `bench.run`, numbers checked for sanity.

It measures nothing worth reading (a few hundred events, one-second wrk runs); it keeps the
bench from rotting while the code it drives changes.
"""

import math
import shutil
from pathlib import Path

import pytest

from bench.run import Config, run
from tests.support import redis_dbs

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("wrk") is None, reason="the bench drives load with wrk"),
]


def test_tiny_bench_produces_numbers_and_loses_nothing(tmp_path: Path) -> None:
    config = Config.quick_mode(
        tmp_path / "BENCH.md",
        ref_seconds=1,
        warmup_seconds=1,
        lpush_messages=2_000,
        copy_rows=2_000,
        burst_events=300,
        paced_seconds=1,
        drain_timeout=20,
        connections=16,
        lead_rate=10,
        redis_db=redis_dbs.BENCH_SMOKE,  # not the full bench's 14: both FLUSHDB theirs
    )
    results = run(config)

    assert results.bare is not None and results.ingest is not None
    assert results.pixels and results.beacons and results.door_reference
    doors = (*results.pixels, *results.beacons, *results.door_reference, results.ingest_unlimited)
    for reference in (results.bare, results.ingest, *doors):
        assert reference is not None and reference.rps > 0 and reference.p99_ms > 0
        assert reference.errors == 0  # no 429, no 4xx: every request was queued
    assert results.lpush_rate > 0 and results.copy_rate > 0
    burst, paced = results.phases
    assert burst.wrk.data["accepted"] == 300 and burst.db.count == 300
    assert burst.drained and paced.drained
    assert not math.isnan(burst.db.lag_p95) and not math.isnan(paced.db.lag_p95)
    assert burst.leads and all(r.status in (200, 201, 202) for r in burst.leads)
    assert results.memory["api_end"] > 0 and results.memory["worker_end"] > 0
    # After draining, every accepted event is a row: nothing lost, nothing dead-lettered.
    assert results.accepted_total == results.committed_total > 300
    assert results.dead_total == 0
    assert config.out.read_text().startswith("# Benchmarks")
    assert config.plot_path.stat().st_size > 10_000
