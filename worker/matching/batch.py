"""One batch, in the caller's transaction: parse → lock → load → rules → write → read outcomes.

Processing is planned in memory and written with one statement per table, which is what makes
a batch fast. A poison event (an unexpected error) is isolated by the unit of work, which reruns
the batch without it.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncConnection

from shared.contract.outcomes import StoredOutcome
from shared.contract.queues import Envelope
from shared.db.locks import event_lock, lock_all
from shared.db.reads import load_outcomes
from shared.db.tenants import tenant_regions
from worker.errors import EventFailedError
from worker.matching.load import load, lock_names
from worker.matching.parse import ParsedEvent, parse
from worker.matching.rules import Plan
from worker.matching.write import write


@dataclass
class BatchResult:
    outcomes: dict[UUID, StoredOutcome]
    created_events: int
    replayed_events: int
    failed_events: int
    bot_events: int  # stored events marked as a bot's
    # Visitors whose earlier anonymous events were not all attached: the follow-up task's work.
    backfills: list[tuple[UUID, str]] = field(default_factory=list)


async def process_batch(
    conn: AsyncConnection,
    envelopes: Sequence[Envelope],
    *,
    now: datetime,
    poisoned: dict[UUID, EventFailedError] | None = None,
    backfill_rows: int,
) -> BatchResult:
    """Match, write and return the outcome of every envelope, inside the caller's transaction.

    `poisoned` names events that failed this batch before; they are dead-lettered, not retried.
    At most `backfill_rows` earlier anonymous events of visitors it identifies are attached.
    """
    regions = await tenant_regions(conn, {e.tenant_id for e in envelopes})
    events, failures = _parse_all(envelopes, regions, poisoned or {})
    await lock_all(conn, lock_names(events) | {event_lock(e.id) for e, _ in failures})
    plan = Plan(await load(conn, events, [e.id for e in envelopes]), now)
    plan.decide(events, failures)
    backfill_left = await write(conn, plan, backfill_rows=backfill_rows)
    stored = await load_outcomes(conn, set(plan.answers.values()))
    outcomes = {eid: stored[src] for eid, src in plan.answers.items() if src in stored}
    backfills = list(plan.visitor_rows) if backfill_left else []
    bots = sum(row["bot"] for row in plan.event_rows)
    return BatchResult(outcomes, plan.created, plan.replayed, len(plan.dead_rows), bots, backfills)


def _parse_all(
    envelopes: Sequence[Envelope],
    regions: dict[UUID, str],
    poisoned: dict[UUID, EventFailedError],
) -> tuple[list[ParsedEvent], list[tuple[Envelope, EventFailedError]]]:
    """The envelopes that parse, and the others with their failure."""
    events: list[ParsedEvent] = []
    failures: list[tuple[Envelope, EventFailedError]] = []
    for envelope in envelopes:
        if envelope.id in poisoned:
            failures.append((envelope, poisoned[envelope.id]))
        elif envelope.tenant_id not in regions:
            failures.append((envelope, _TENANT_NOT_FOUND))
        else:
            try:
                events.append(parse(envelope, regions[envelope.tenant_id]))
            except EventFailedError as exc:
                failures.append((envelope, exc))
    return events, failures


_TENANT_NOT_FOUND = EventFailedError(
    "tenant_not_found", 404, "Tenant not found", "the event's tenant does not exist"
)
