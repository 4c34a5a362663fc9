"""The report's figure: accepted and committed rates, queue depth, RSS and lead latency."""

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

from bench.report import MB, lead_latencies, quantile

if TYPE_CHECKING:
    from bench.results import Results


def plot(results: "Results", path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), dpi=80)
    (rates, backlog), (leads, memory) = axes
    pending = backlog.twinx()  # events, not messages: one message carries many events
    offset = 0.0
    for phase in results.phases:
        s = phase.samples
        t = [offset + x.t for x in s]
        pairs = list(itertools.pairwise(s))
        mid = [offset + (a.t + b.t) / 2 for a, b in pairs]
        acc = [(b.accepted - a.accepted) / max(b.t - a.t, 1e-6) for a, b in pairs]
        com = [(b.committed - a.committed) / max(b.t - a.t, 1e-6) for a, b in pairs]
        first = phase is results.phases[0]
        rates.plot(mid, acc, color="tab:blue", lw=1, label="accepted/s" if first else None)
        rates.plot(mid, com, color="tab:green", lw=1, label="committed/s" if first else None)
        backlog.plot(
            t,
            [x.activity for x in s],
            color="tab:orange",
            lw=1,
            label="activity queue (messages)" if first else None,
        )
        backlog.plot(
            t,
            [x.leads for x in s],
            color="tab:red",
            lw=1,
            label="leads queue (messages)" if first else None,
        )
        pending.plot(
            t,
            [x.accepted - x.committed - x.dead for x in s],
            color="tab:gray",
            lw=1,
            ls="--",
            label="accepted, not committed (events)" if first else None,
        )
        memory.plot(
            t, [x.api_rss / MB for x in s], color="tab:blue", lw=1, label="API" if first else None
        )
        memory.plot(
            t,
            [x.worker_rss / MB for x in s],
            color="tab:purple",
            lw=1,
            label="worker (3 processes)" if first else None,
        )
        for ax in (rates, backlog, memory):
            ax.axvline(offset, color="black", lw=0.5, alpha=0.4)
        rates.text(
            offset,
            0.98,
            f" {phase.name}",
            fontsize=8,
            va="top",
            rotation=90,
            transform=rates.get_xaxis_transform(),
        )
        offset = t[-1] if t else offset
    rates.set(title="Rates (per 0.5 s sample)", xlabel="s", ylabel="events/s")
    backlog.set(title="Backlog", xlabel="s", ylabel="messages")
    pending.set_ylabel("events")
    pending.set_ylim(bottom=0)
    backlog.set_ylim(bottom=0)
    pending.legend(fontsize=8, loc="upper left")
    memory.set(title="RSS", xlabel="s", ylabel="MB")
    memory.set_ylim(bottom=0)
    for ax in (rates, backlog, memory):
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)

    burst = results.phases[0]
    lat = [x * 1000 for x in lead_latencies(burst)]
    if lat:
        leads.hist(lat, bins=40, color="tab:red", alpha=0.8)
        for q, style in ((0.5, "-"), (0.99, "--")):
            value = quantile(lat, q)
            leads.axvline(
                value, color="black", ls=style, lw=1, label=f"p{round(q * 100)} {value:,.0f} ms"
            )
        leads.legend(fontsize=8)
    leads.set(
        title=f"Lead lane latency during the burst (n={len(lat)}, Prefer: wait)",
        xlabel="ms",
        ylabel="requests",
    )
    leads.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
