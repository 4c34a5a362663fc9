"""The report's sections on where the time went: CPU per process and phase, the worker's
per-message cost, and (with --profile) py-spy's summaries."""

import math
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.profile import Role
    from bench.results import PhaseResult, Results

_KNOWN = ("api", "consumer", "pool", "postgres", "redis", "wrk", "bench")
_LABELS = {"consumer": "worker: Celery consumer", "pool": "worker: 2 pool processes"}


def _other(phase: "PhaseResult") -> float:
    """CPU seconds the box spent on anything the bench did not start (or py-spy)."""
    return max(0.0, phase.cpu["machine_busy"] - sum(phase.cpu[k] for k in _KNOWN))


def _cpu_table(phases: "list[PhaseResult]") -> list[str]:
    header = "| process | " + " | ".join(f"{p.name}: CPU s (cores)" for p in phases) + " |"
    rows = [header, "|---|" + "---|" * len(phases)]
    for name in (*_KNOWN, "other", "idle"):
        cells = []
        for phase in phases:
            cpu = phase.cpu
            seconds = (
                _other(phase)
                if name == "other"
                else cpu["machine_total"] - cpu["machine_busy"]
                if name == "idle"
                else cpu[name]
            )
            cells.append(f"{seconds:.1f} ({seconds / phase.seconds:.2f})")
        rows.append(f"| {_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return rows


def _cpu_per_event(phase: "PhaseResult") -> list[str]:
    """CPU per committed event, and the rate the box's cores allow at that cost."""
    events = max(phase.db.count, 1)
    per = {name: 1000 * phase.cpu[name] / events for name in _KNOWN if name != "bench"}
    total = sum(per.values())
    cores = os.cpu_count() or 1
    parts = ", ".join(f"{_LABELS.get(k, k)} {v:.2f}" for k, v in per.items())
    return [
        f"CPU per event in the {phase.name} ({events:,} events): {parts}; **total "
        f"{total:.2f} ms**. At that cost {cores} cores allow at most ≈ "
        f"**{1000 * cores / total:,.0f} events/s** end to end, with nothing else running; "
        f"3,000 events/s would need ≈ {3 * total:.1f} cores. The API alone needs "
        f"{3 * per['api']:.1f} cores for 3,000 single-event POSTs/s.",
        "",
    ]


def cpu_sections(results: "Results") -> list[str]:
    burst = next(p for p in results.phases if p.name == "burst")
    lines: list[str] = []
    lines += [
        "",
        "## Where the CPU went (per phase: CPU seconds, and cores busy on average)",
        "",
        "postgres and redis are every process of that name on the box (other sessions' too); "
        "*other* is the rest of the machine's busy time (py-spy's, with `--profile`); *idle* "
        f"is what was left of the {os.cpu_count()} cores.",
        "",
        *_cpu_table(results.phases),
        "",
        *_cpu_per_event(burst),
    ]
    for phase in results.phases:
        b = phase.batches
        if not b:
            continue
        lines += [
            f"{phase.name}: the worker spent {b['busy_s']:.1f} s inside tasks (summed over its 2 "
            f"pool processes, {phase.seconds:.0f} s wall) for {b['events']:,.0f} events in "
            f"{b['batches']:,.0f} messages: {b['mean_ms']:.0f} ms per message of "
            f"{b['mean_events']:.1f} events on average, so at most ≈ "
            f"{2 * b['events'] / max(b['busy_s'], 1e-9):,.0f} events/s with this message size. "
            f"Its processes used "
            f"{(phase.cpu['consumer'] + phase.cpu['pool']) / phase.seconds:.2f} cores."
            + (
                f" Fitted over the {b['batches']:,.0f} messages: ≈ {b['fixed_ms']:.1f} ms per "
                f"message + {b['per_event_ms']:.2f} ms per event."
                if not math.isnan(b.get("fixed_ms", float("nan")))
                else ""
            ),
            "",
        ]
    fit = results.all_batches
    if fit.get("fixed_ms") is not None and not math.isnan(fit["fixed_ms"]):
        lines += [
            f"All {fit['batches']:,.0f} messages of the run (1 to {fit['max_events']:.0f} events "
            f"each), fitted: **≈ {fit['fixed_ms']:.1f} ms per message + "
            f"{fit['per_event_ms']:.2f} ms per event** inside the task (wall, 2 processes "
            "sharing the cores with everything else). Messages are as big as the API's "
            "coalescing makes them: page views wait up to `LEADSTREAM_ENQUEUE_ACTIVITY_LINGER_MS` "
            "for company, until `LEADSTREAM_ENQUEUE_ACTIVITY_FLUSH_EVENTS` share a message.",
            "",
        ]
    return lines


def _frames(rows: list[tuple[str, float]]) -> list[str]:
    return [f"| {share:.1%} | `{frame}` |" for frame, share in rows]


def profile_sections(results: "Results") -> list[str]:
    """py-spy summaries: the evidence for where the time goes (only with --profile)."""
    wanted: list[tuple[str, Role | None, str, int, int]] = [
        ("API during (b), on-CPU samples", results.ingest_profile.get("process"), "on CPU", 10, 15),
    ]
    for phase in results.phases:
        worker, api = phase.profiles.get("worker", {}), phase.profiles.get("api", {})
        wanted += [
            (
                f"worker pool (2 processes) during {phase.name}, wall time incl. waits",
                worker.get("pool"),
                "wall",
                12,
                25,
            ),
            (
                f"worker consumer (Celery main process) during {phase.name}, wall time",
                worker.get("consumer"),
                "wall",
                5,
                12,
            ),
            (f"API during {phase.name}, on-CPU samples", api.get("process"), "on CPU", 8, 12),
        ]
    lines: list[str] = []
    for title, role, kind, n_self, n_incl in wanted:
        if role is None or not role.samples:
            continue
        seconds = role.samples / 100  # py-spy --rate 100
        lines += [
            f"### {title}",
            "",
            f"{role.samples:,} samples ({seconds:.0f} {kind} seconds summed over processes).",
            "",
            "| share | what (by leaf frame) |",
            "|---|---|",
            *[f"| {share:.1%} | {name} |" for name, share in role.categories()],
            "",
            "| share | leaf frame |",
            "|---|---|",
            *_frames(role.top_self(n_self)),
            "",
            "| share | Leadstream function, inclusive |",
            "|---|---|",
            *_frames(role.top_project(n_incl)),
            "",
        ]
    if lines:
        lines = [
            "## Profiles (py-spy, `--profile`)",
            "",
            "Sampled at 100 Hz with `py-spy record --format raw --nonblocking` (the worker with "
            "`--subprocesses --idle`, so a pool process waiting on PostgreSQL counts). py-spy "
            "itself costs some CPU, so a profiled run's figures are a little lower. Inclusive "
            "shares are lower bounds: an awaiting coroutine is not on the stack (its wait shows "
            "as `EpollSelector.select`), and `--nonblocking` sometimes reads a truncated stack.",
            "",
            *lines,
        ]
    return lines
