"""The unit of work around matching: one transaction per batch, retries, poison isolation,
and publishing the outcomes once committed."""

import asyncio
import functools
import random
from datetime import UTC, datetime
from importlib.resources import files
from uuid import UUID

import redis
import structlog
from redis.commands.core import Script
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contract.outcomes import OUTCOME_CHANNEL, OUTCOME_STREAM, StoredOutcome, event_key
from shared.contract.queues import Envelope
from shared.settings import Settings
from worker.errors import TransientError
from worker.matching import (
    BatchResult,
    DuplicateEventError,
    EventFailedError,
    PoisonEventError,
    process_batch,
)

log = structlog.get_logger(__name__)

# Lock contention a quick retry resolves (the retry sees the winner's commit).
_CONTENTION = {"40001", "40P01", "55P03", "23505", "23503"}
_CONTENTION_ATTEMPTS = 5

_PUBLISH_SCRIPT = files("worker").joinpath("publish_outcomes.lua").read_bytes()


@functools.cache
def _publisher(client: redis.Redis) -> Script:
    """The script registered once per client (a process has one), not hashed per batch."""
    return client.register_script(_PUBLISH_SCRIPT)


def _sqlstate(exc: DBAPIError) -> str:
    # SQLAlchemy's asyncpg adapter keeps the driver's error (with its SQLSTATE) as the cause.
    for error in (exc.orig, getattr(exc.orig, "__cause__", None)):
        state = getattr(error, "sqlstate", None)
        if state:
            return str(state)
    return ""


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        state = _sqlstate(exc)
        return exc.connection_invalidated or state[:2] in {"08", "53", "57"}
    return isinstance(exc, OSError | ConnectionError | TimeoutError)


async def commit_batch(engine: AsyncEngine, envelopes: list[Envelope]) -> BatchResult:
    """Process a batch in one transaction, retrying contention and isolating poison events.

    Unavailability raises TransientError (the task retries later). An error that is neither
    contention nor unavailability is pinned on one event by bisection and dead-lettered.
    """
    poisoned: dict[UUID, EventFailedError] = {}
    contention = 0
    while True:
        try:
            async with engine.begin() as conn:
                return await process_batch(
                    conn, envelopes, now=datetime.now(UTC), poisoned=poisoned
                )
        except PoisonEventError as exc:
            log.error("event.poison", event_id=str(exc.event_id), error=repr(exc.error))
            poisoned[exc.event_id] = EventFailedError(
                "processing_error",
                500,
                "Processing error",
                f"the worker failed on this event: {type(exc.error).__name__}",
            )
            continue
        except DuplicateEventError:
            pass
        except DBAPIError as exc:
            if _is_unavailable(exc):
                raise TransientError(f"database unavailable: {exc.orig!r}") from exc
            if _sqlstate(exc) not in _CONTENTION:
                return await _bisect(engine, envelopes, exc)
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise TransientError(f"database unreachable: {exc!r}") from exc
        except Exception as exc:
            return await _bisect(engine, envelopes, exc)
        contention += 1
        if contention >= _CONTENTION_ATTEMPTS:
            raise TransientError("lock contention persisted")
        log.info("batch.contention_retry", attempt=contention)
        await asyncio.sleep(random.uniform(0.01, 0.05 * 2**contention))


async def _bisect(engine: AsyncEngine, envelopes: list[Envelope], exc: Exception) -> BatchResult:
    if len(envelopes) == 1:
        (envelope,) = envelopes
        state = _sqlstate(exc) if isinstance(exc, DBAPIError) else ""
        log.error("event.rejected", event_id=str(envelope.id), error=repr(exc), sqlstate=state)
        error = (
            EventFailedError(
                "rejected_by_database",
                422,
                "Rejected by the database",
                f"the database refused this event (SQLSTATE {state or 'unknown'})",
            )
            if isinstance(exc, DBAPIError)
            else EventFailedError(
                "processing_error",
                500,
                "Processing error",
                f"the worker failed on this event: {type(exc).__name__}",
            )
        )
        try:
            async with engine.begin() as conn:
                return await process_batch(
                    conn, envelopes, now=datetime.now(UTC), poisoned={envelope.id: error}
                )
        except Exception as again:
            # Not even the dead letter could be written: keep the message and try later.
            raise TransientError(f"cannot dead-letter {envelope.id}: {again!r}") from again
    middle = len(envelopes) // 2
    left = await commit_batch(engine, envelopes[:middle])
    right = await commit_batch(engine, envelopes[middle:])
    return BatchResult(
        {**left.outcomes, **right.outcomes},
        left.created_events + right.created_events,
        left.replayed_events + right.replayed_events,
        left.failed_events + right.failed_events,
    )


async def dead_letter_batch(
    engine: AsyncEngine, envelopes: list[Envelope], *, detail: str
) -> BatchResult:
    """Store a batch whose retries ran out as dead letters (events already stored stay so)."""
    error = EventFailedError(
        "retries_exhausted", 503, "Retries exhausted", f"a transient failure persisted: {detail}"
    )
    try:
        async with engine.begin() as conn:
            return await process_batch(
                conn, envelopes, now=datetime.now(UTC), poisoned={e.id: error for e in envelopes}
            )
    except Exception as exc:  # the database is still unreachable: keep retrying
        raise TransientError(f"cannot dead-letter the batch: {exc!r}") from exc


def publish_outcomes(
    client: redis.Redis,
    envelopes: list[Envelope],
    outcomes: dict[UUID, StoredOutcome],
    settings: Settings,
) -> None:
    """Store every outcome, announce it on the stream, and wake the callers who wait."""
    keys: list[str] = [OUTCOME_STREAM]
    args: list[str | bytes | int] = [
        settings.outcome_ttl_seconds,
        settings.outcome_stream_maxlen,
        OUTCOME_CHANNEL,
    ]
    for envelope in envelopes:
        outcome = outcomes.get(envelope.id)
        if outcome is None:
            continue
        event_id = str(envelope.id)
        keys.append(event_key(event_id))
        args += (event_id, str(outcome.tenant_id), outcome.dumps(), int(envelope.notify))
    if len(keys) == 1:
        return
    try:
        # One script call, not 2-3 commands per event: redis-py's per-command cost dominated.
        _publisher(client)(keys, args)
    except redis.RedisError as exc:
        raise TransientError(f"redis unavailable for outcomes: {exc!r}") from exc
