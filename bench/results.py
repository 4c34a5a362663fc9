"""What a bench run measured: its configuration, samples, phases and references."""

import contextlib
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import profile
from bench.load import LeadResult, WrkResult


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
    ingest_unlimited: Reference | None = None  # (b), the rate limiter off
    # b3 and b4: rounds of (b), pixel and beacon runs, interleaved.
    door_reference: list[Reference] = field(default_factory=list)
    pixels: list[Reference] = field(default_factory=list)
    beacons: list[Reference] = field(default_factory=list)
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


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)
