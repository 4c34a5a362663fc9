"""Failure classes, and the one place that decides what a failure means for a batch."""

from enum import Enum
from typing import Any
from uuid import UUID

import redis
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError

from shared.contract.problems import problem_body


class TransientError(Exception):
    """Worth retrying later: the database or Redis is unreachable or contended."""


# A dead letter of this reason holds the envelope as it was queued, which cannot be queued again.
MALFORMED_ENVELOPE = "malformed_envelope"


class EventFailedError(Exception):
    """This event can never succeed as sent: it goes to the dead letters."""

    def __init__(self, reason: str, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.status, self.title, self.detail = reason, status, title, detail

    def problem(self, event_id: UUID) -> dict[str, Any]:
        return problem_body(
            self.status,
            self.title,
            self.detail,
            kind=self.reason.replace("_", "-"),
            extra={"eventId": str(event_id)},
        )


def processing_error(error: BaseException) -> EventFailedError:
    """The failure of an event the worker itself failed on (a bug): never retried."""
    return EventFailedError(
        "processing_error",
        500,
        "Processing error",
        f"the worker failed on this event: {type(error).__name__}",
    )


def malformed_envelope_error(error: ValidationError) -> EventFailedError:
    """The failure of a queued envelope that does not validate: never retried, not replayable."""
    # Where and why, never the values: they may be personal data.
    where = "; ".join(
        f"{'.'.join(map(str, e['loc'])) or '(envelope)'}: {e['type']}"
        for e in error.errors(include_input=False, include_url=False)
    )
    return EventFailedError(
        MALFORMED_ENVELOPE, 422, "Malformed envelope", f"the queued envelope is invalid: {where}"
    )


def retries_exhausted_error(detail: str) -> EventFailedError:
    """The failure of events whose transient failure outlasted every retry: replayable."""
    return EventFailedError(
        "retries_exhausted", 503, "Retries exhausted", f"a transient failure persisted: {detail}"
    )


class PoisonEventError(Exception):
    """An unexpected error while planning one event (a bug); the batch is rerun without it."""

    def __init__(self, event_id: UUID, error: Exception) -> None:
        super().__init__(f"event {event_id}: {error!r}")
        self.event_id, self.error = event_id, error


class DuplicateEventError(Exception):
    """An event row appeared under our locks; retrying the batch is always safe."""


class Failure(Enum):
    """What a batch's failure calls for."""

    TRANSIENT = "transient"  # the database is unreachable: the task retries later
    RERUN = "rerun"  # lost a race with another transaction: a rerun at once sees the winner
    POISON = "poison"  # anything else: one event is at fault, found by bisection
    # The message is too big for one transaction (the lock table is full, or a statement timed
    # out again): commit it in halves; one event alone is retried later.
    SPLIT = "split"


# Deadlock, serialisation failure and lock timeout, but also unique and foreign-key violations:
# another transaction committed first (or deleted a parent), and a rerun reads its result.
_RERUN_SQLSTATES = {"40001", "40P01", "55P03", "23505", "23503"}
# Connection exceptions, insufficient resources, operator intervention (e.g. a restart).
_UNAVAILABLE_CLASSES = {"08", "53", "57"}
# Out of shared memory: the cluster's lock table is full, and retrying the same transaction
# refills it (max_locks_per_transaction is shared by every session).
_OUT_OF_SHARED_MEMORY = "53200"
STATEMENT_TIMEOUT = "57014"


_REDIS_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.BusyLoadingError,
)


def sqlstate(exc: DBAPIError) -> str:
    """The SQLSTATE of a database error, or "" if the driver gave none."""
    # SQLAlchemy's asyncpg adapter keeps the driver's error (with its SQLSTATE) as the cause.
    for error in (exc.orig, getattr(exc.orig, "__cause__", None)):
        state = getattr(error, "sqlstate", None)
        if state:
            return str(state)
    return ""


def classify(exc: BaseException, *, failed_before: bool = False) -> Failure:
    """The one classification of a failure, for the unit of work and the task decorator.

    `failed_before`: this message already failed once (a rerun, or a redelivered task), so a
    statement timeout is the message's size, not a passing load spike.
    """
    if isinstance(exc, TransientError):
        return Failure.TRANSIENT
    if isinstance(exc, DuplicateEventError):
        # Only possible if a writer bypassed the locks; the rerun finds the event stored.
        return Failure.RERUN
    if isinstance(exc, DBAPIError):
        state = sqlstate(exc)
        if state == _OUT_OF_SHARED_MEMORY or (state == STATEMENT_TIMEOUT and failed_before):
            return Failure.SPLIT
        if exc.connection_invalidated or state[:2] in _UNAVAILABLE_CLASSES:
            return Failure.TRANSIENT
        return Failure.RERUN if state in _RERUN_SQLSTATES else Failure.POISON
    # A tuple: a union of a union type with a tuple raised TypeError for every other error.
    if isinstance(exc, (OSError, ConnectionError, TimeoutError, *_REDIS_UNAVAILABLE)):
        # Publishing the outcomes after commit, too: the retry finds the events stored and
        # publishes again.
        return Failure.TRANSIENT
    return Failure.POISON
