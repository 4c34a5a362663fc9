"""The unit of work around matching: one transaction per batch, retries, poison isolation,
and publishing the outcomes once committed."""

import asyncio
import random
from datetime import UTC, datetime
from uuid import UUID

import redis
import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.outcomes import OUTCOME_CHANNEL, OUTCOME_STREAM, StoredOutcome, event_key
from shared.queue import Envelope
from shared.settings import Settings
from worker.app import TransientError
from worker.matching import BatchResult, DuplicateEventError, EventFailedError, process_batch

log = structlog.get_logger(__name__)

# Lock contention a quick retry resolves (the retry sees the winner's commit).
_CONTENTION = {"40001", "40P01", "55P03", "23505", "23503"}
_CONTENTION_ATTEMPTS = 5


def _sqlstate(exc: DBAPIError) -> str:
    return str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or "")


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        state = _sqlstate(exc)
        return exc.connection_invalidated or state[:2] in {"08", "53", "57"}
    return isinstance(exc, OSError | ConnectionError | TimeoutError)


async def commit_batch(engine: AsyncEngine, envelopes: list[Envelope]) -> BatchResult:
    """Process a batch in one transaction; isolate an event the database rejects by bisection."""
    poisoned: dict[UUID, EventFailedError] = {}
    for attempt in range(_CONTENTION_ATTEMPTS):
        try:
            async with engine.begin() as conn:
                return await process_batch(
                    conn, envelopes, now=datetime.now(UTC), poisoned=poisoned
                )
        except DuplicateEventError:
            pass
        except DBAPIError as exc:
            if _is_unavailable(exc):
                raise TransientError(f"database unavailable: {exc.orig!r}") from exc
            if _sqlstate(exc) not in _CONTENTION:
                return await _bisect(engine, envelopes, exc)
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise TransientError(f"database unreachable: {exc!r}") from exc
        log.info("batch.contention_retry", attempt=attempt + 1)
        await asyncio.sleep(random.uniform(0.01, 0.05 * 2**attempt))
    raise TransientError("lock contention persisted")


async def _bisect(engine: AsyncEngine, envelopes: list[Envelope], exc: DBAPIError) -> BatchResult:
    if len(envelopes) == 1:
        (envelope,) = envelopes
        log.error("event.rejected_by_database", event_id=str(envelope.id), error=str(exc.orig))
        error = EventFailedError(
            "rejected_by_database", 422, "Rejected by the database",
            f"the database refused this event: {type(exc.orig).__name__}",
        )
        async with engine.begin() as conn:
            return await process_batch(
                conn, envelopes, now=datetime.now(UTC), poisoned={envelope.id: error}
            )
    middle = len(envelopes) // 2
    left = await commit_batch(engine, envelopes[:middle])
    right = await commit_batch(engine, envelopes[middle:])
    return BatchResult(
        {**left.outcomes, **right.outcomes},
        left.created_events + right.created_events,
        left.replayed_events + right.replayed_events,
        left.failed_events + right.failed_events,
    )


def publish_outcomes(
    client: redis.Redis,
    envelopes: list[Envelope],
    outcomes: dict[UUID, StoredOutcome],
    settings: Settings,
) -> None:
    """Store every outcome, announce it on the stream, and wake the callers who wait."""
    pipe = client.pipeline(transaction=False)
    for envelope in envelopes:
        outcome = outcomes.get(envelope.id)
        if outcome is None:
            continue
        data = outcome.dumps()
        event_id = str(envelope.id)
        pipe.set(event_key(event_id), data, ex=settings.outcome_ttl_seconds)
        pipe.xadd(
            OUTCOME_STREAM,
            {"id": event_id, "tenantId": str(outcome.tenant_id), "outcome": data},
            maxlen=settings.outcome_stream_maxlen,
            approximate=True,
        )
        if envelope.notify:
            pipe.publish(OUTCOME_CHANNEL, b'{"id":"%s","outcome":%s}' % (event_id.encode(), data))
    try:
        pipe.execute()
    except redis.RedisError as exc:
        raise TransientError(f"redis unavailable for outcomes: {exc!r}") from exc
