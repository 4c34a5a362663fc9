"""The unit of work around matching: one transaction per batch, reruns, poison isolation,
and publishing the outcomes once committed."""

import asyncio
import functools
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.resources import files
from uuid import UUID

import redis
import structlog
from redis.commands.core import Script
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contract.outcomes import OUTCOME_STREAM, StoredOutcome, event_key, outcome_channel
from shared.contract.queues import Envelope
from shared.db.locks import event_lock, lock_all
from shared.db.reads import load_outcomes
from shared.settings import Settings
from worker.envelopes import Malformed
from worker.errors import (
    EventFailedError,
    Failure,
    PoisonEventError,
    TransientError,
    classify,
    processing_error,
    sqlstate,
)
from worker.matching.batch import BatchResult, process_batch
from worker.matching.load import lock_estimate
from worker.matching.rules import dead_letter_row
from worker.matching.write import write_dead_letters

log = structlog.get_logger(__name__)

# Reruns of a batch that lost a race, before it counts as a transient failure.
_RERUN_ATTEMPTS = 5

_PUBLISH_SCRIPT = files("worker").joinpath("publish_outcomes.lua").read_bytes()


@functools.cache
def _publisher(client: redis.Redis) -> Script:
    """The script registered once per client (a process has one), not hashed per batch."""
    return client.register_script(_PUBLISH_SCRIPT)


@dataclass(frozen=True)
class Limits:
    """What one transaction may hold (settings; the defaults are theirs)."""

    lock_budget: int = Settings.model_fields["lock_budget_per_transaction"].default
    backfill_rows: int = Settings.model_fields["backfill_rows_per_transaction"].default

    @classmethod
    def of(cls, settings: Settings) -> "Limits":
        return cls(settings.lock_budget_per_transaction, settings.backfill_rows_per_transaction)


def split_by_locks(envelopes: list[Envelope], budget: int) -> list[list[Envelope]]:
    """The message in consecutive parts whose advisory locks stay within the budget (an event
    needing more is a part alone), so one message cannot fill PostgreSQL's lock table."""
    parts: list[list[Envelope]] = [[]]
    used = 0
    for envelope in envelopes:
        locks = lock_estimate(envelope)
        if parts[-1] and used + locks > budget:
            parts.append([])
            used = 0
        parts[-1].append(envelope)
        used += locks
    return parts


async def commit_batch(
    engine: AsyncEngine,
    envelopes: list[Envelope],
    *,
    limits: Limits = Limits(),
    failed_before: bool = False,
) -> BatchResult:
    """Commit a message in as few transactions as its lock budget allows; see `_commit`.

    Each transaction takes its locks in the one global order, and they commit one after the
    other, so splitting cannot deadlock. `failed_before`: this message failed before (a retried
    task), for `classify`.
    """
    parts = split_by_locks(envelopes, limits.lock_budget)
    if len(parts) > 1:
        log.info("batch.split_by_locks", transactions=len(parts), events=len(envelopes))
    results = [await _commit(engine, part, limits, failed_before) for part in parts]
    return combine(results)


def combine(results: list[BatchResult]) -> BatchResult:
    """The result of a message committed in several transactions."""
    if len(results) == 1:
        return results[0]
    return BatchResult(
        {k: v for r in results for k, v in r.outcomes.items()},
        sum(r.created_events for r in results),
        sum(r.replayed_events for r in results),
        sum(r.failed_events for r in results),
        sum(r.bot_events for r in results),
        [b for r in results for b in r.backfills],
    )


async def _commit(
    engine: AsyncEngine, envelopes: list[Envelope], limits: Limits, failed_before: bool
) -> BatchResult:
    """Process a batch in one transaction, rerunning lost races and isolating poison events.

    What each failure means is decided by `classify`: unavailability raises TransientError (the
    task retries later), a lost race reruns the batch at once, a batch too big for one
    transaction is committed in halves, and anything else is pinned on one event by bisection
    and dead-lettered.
    """
    poisoned: dict[UUID, EventFailedError] = {}
    reruns = 0
    while True:
        try:
            async with engine.begin() as conn:
                return await process_batch(
                    conn,
                    envelopes,
                    now=datetime.now(UTC),
                    poisoned=poisoned,
                    backfill_rows=limits.backfill_rows,
                )
        except PoisonEventError as exc:
            log.error("event.poison", event_id=str(exc.event_id), error=repr(exc.error))
            poisoned[exc.event_id] = processing_error(exc.error)
            continue
        except Exception as exc:
            failure = classify(exc, failed_before=failed_before or reruns > 0)
            if failure is Failure.TRANSIENT:
                raise _unavailable(exc) from exc
            if failure is Failure.SPLIT:
                return await _halve(engine, envelopes, exc, limits)
            if failure is Failure.POISON:
                return await _bisect(engine, envelopes, exc, limits)
        # Failure.RERUN: a lost race (DuplicateEventError included); the rerun sees the winner.
        reruns += 1
        if reruns >= _RERUN_ATTEMPTS:
            raise TransientError("lock contention persisted")
        log.info("batch.contention_retry", attempt=reruns)
        await asyncio.sleep(random.uniform(0.01, 0.05 * 2**reruns))


def _unavailable(exc: Exception) -> TransientError:
    if isinstance(exc, TransientError):
        return exc
    if isinstance(exc, DBAPIError):
        return TransientError(f"database unavailable: {exc.orig!r}")
    return TransientError(f"database unreachable: {exc!r}")


async def _halve(
    engine: AsyncEngine, envelopes: list[Envelope], exc: Exception, limits: Limits
) -> BatchResult:
    """Commit a batch too big for one transaction in two; one event alone waits for a retry."""
    state = sqlstate(exc) if isinstance(exc, DBAPIError) else ""
    if len(envelopes) == 1:
        raise TransientError(f"one event too big for the database now (SQLSTATE {state})")
    log.warning("batch.split", events=len(envelopes), sqlstate=state)
    middle = len(envelopes) // 2
    return combine(
        [
            await _commit(engine, envelopes[:middle], limits, True),
            await _commit(engine, envelopes[middle:], limits, True),
        ]
    )


async def _bisect(
    engine: AsyncEngine, envelopes: list[Envelope], exc: Exception, limits: Limits
) -> BatchResult:
    if len(envelopes) == 1:
        (envelope,) = envelopes
        state = sqlstate(exc) if isinstance(exc, DBAPIError) else ""
        log.error("event.rejected", event_id=str(envelope.id), error=repr(exc), sqlstate=state)
        error = (
            EventFailedError(
                "rejected_by_database",
                422,
                "Rejected by the database",
                f"the database refused this event (SQLSTATE {state or 'unknown'})",
            )
            if isinstance(exc, DBAPIError)
            else processing_error(exc)
        )
        try:
            async with engine.begin() as conn:
                return await process_batch(
                    conn,
                    envelopes,
                    now=datetime.now(UTC),
                    poisoned={envelope.id: error},
                    backfill_rows=limits.backfill_rows,
                )
        except Exception as again:
            # Not even the dead letter could be written: keep the message and try later.
            raise TransientError(f"cannot dead-letter {envelope.id}: {again!r}") from again
    middle = len(envelopes) // 2
    return combine(
        [
            await _commit(engine, envelopes[:middle], limits, False),
            await _commit(engine, envelopes[middle:], limits, False),
        ]
    )


async def dead_letter_batch(
    engine: AsyncEngine, envelopes: list[Envelope], *, error: EventFailedError
) -> BatchResult:
    """Store a batch that cannot be processed as dead letters (events already stored stay so)."""
    try:
        async with engine.begin() as conn:
            return await process_batch(
                conn,
                envelopes,
                now=datetime.now(UTC),
                poisoned={e.id: error for e in envelopes},
                backfill_rows=0,  # every event becomes a dead letter: none identifies a visitor
            )
    except Exception as exc:  # the database is still unreachable: keep retrying
        raise TransientError(f"cannot dead-letter the batch: {exc!r}") from exc


async def dead_letter_malformed(engine: AsyncEngine, malformed: list[Malformed]) -> BatchResult:
    """Store envelopes that do not validate as dead letters, each as it was queued."""
    now = datetime.now(UTC)
    # By id: a message may repeat one (ON CONFLICT cannot update a row twice in one statement).
    rows = {
        m.stand_in.id: dead_letter_row(m.stand_in.id, m.stand_in.tenant_id, m.wire, m.error, now)
        for m in malformed
    }
    try:
        async with engine.begin() as conn:
            # Under the events' locks, as every dead letter is written: a concurrent replay or
            # redelivery of the same id waits for this one.
            await lock_all(conn, (event_lock(i) for i in rows))
            await write_dead_letters(conn, list(rows.values()))
            outcomes = await load_outcomes(conn, rows)
    except Exception as exc:  # the database is unreachable: keep retrying
        raise TransientError(f"cannot dead-letter malformed envelopes: {exc!r}") from exc
    return BatchResult(outcomes, 0, 0, len(rows), 0)


def publish_outcomes(
    client: redis.Redis,
    envelopes: list[Envelope],
    outcomes: dict[UUID, StoredOutcome],
    settings: Settings,
) -> None:
    """Drop the committed events' "queued" markers, announce their outcomes on the stream, and
    wake the callers who may wait for them (see shared.contract.outcomes)."""
    keys: list[str] = [OUTCOME_STREAM]
    args: list[str | bytes | int] = [
        settings.outcome_stream_maxlen,
        outcome_channel(settings.redis_url, settings.deployment_id),
    ]
    for envelope in envelopes:
        outcome = outcomes.get(envelope.id)
        if outcome is None:
            continue
        event_id = str(envelope.id)
        ttl = _copy_ttl(envelope, outcome, settings)
        keys.append(event_key(event_id))
        args += (
            event_id,
            str(outcome.tenant_id),
            outcome.status,
            outcome.http_status or 500,
            ttl,
            outcome.dumps() if ttl else b"",
            # A keyed event's replays may wait for it, whether or not its own caller did.
            int(envelope.notify or envelope.idempotency_key is not None),
        )
    if len(keys) == 1:
        return
    try:
        # One script call, not 2-3 commands per event: redis-py's per-command cost dominated.
        _publisher(client)(keys, args)
    except redis.RedisError as exc:
        raise TransientError(f"redis unavailable for outcomes: {exc!r}") from exc


def _copy_ttl(envelope: Envelope, outcome: StoredOutcome, settings: Settings) -> int:
    """How long Redis keeps a copy of this outcome under the event's id; 0 for none."""
    if outcome.body is not None and outcome.body.get("event", {}).get("id") not in (
        None,
        str(envelope.id),
    ):
        # A keyed duplicate answered by another event: PostgreSQL has no row under its id.
        return settings.outcome_ttl_seconds
    return settings.outcome_wait_ttl_seconds if envelope.notify else 0
