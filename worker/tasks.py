"""The one task decorator with the retry policy, and the task: parse, hand over, publish."""

import functools
import os
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import structlog
from celery import Task
from celery.exceptions import Reject

from shared.broker.wire import envelopes_argsrepr
from shared.contract.queues import (
    ACTIVITY_QUEUE,
    BACKFILL_VISITOR_TASK,
    PROCESS_EVENTS_TASK,
)
from worker import background
from worker.app import Runtime, app, runtime, settings
from worker.envelopes import read_envelopes
from worker.errors import Failure, classify, processing_error, retries_exhausted_error
from worker.unit_of_work import (
    Limits,
    combine,
    commit_batch,
    dead_letter_batch,
    dead_letter_malformed,
    publish_outcomes,
)

log = structlog.get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# How much of an envelope that cannot be stored is logged: enough to recognise it.
_LOGGED_CHARS = 2000


def retry_countdown(retries: int) -> float:
    """Exponential backoff with full jitter, capped at 20 s (and at a quarter of the hard limit
    by the decorator)."""
    return random.uniform(0, min(20.0, 2.0**retries))


def retries_exhausted(task: Task) -> bool:
    """Whether the task has been retried `task_max_retries` times: time for its fallback."""
    return int(task.request.retries) >= settings.task_max_retries


def _back_off(exc: Exception, attempt: int) -> None:
    # Back off here, then requeue at once: a countdown would make an ETA message, which
    # RabbitMQ's quorum queues cannot hold without extra exchanges.
    delay = min(retry_countdown(attempt), settings.task_time_limit_seconds / 4)
    log.warning("task.retry", error=str(exc), retries=attempt, delay=round(delay, 2))
    time.sleep(delay)


def leadstream_task(*, name: str, argsrepr: Callable[..., str]) -> Callable[[F], Task]:
    """The one way to declare a task: stable name, acks late, and the retry policy.

    `argsrepr(*args)` is what a retry's message shows as its arguments (Flower shows it): Celery
    would write the arguments' repr, personal data included.

    A failure `classify` calls transient is retried with backoff, without end, so a transient
    failure never drops an accepted event; once `retries_exhausted`, a task takes its fallback
    (which may itself fail transiently and be retried). Anything else is a bug in one event,
    which the unit of work isolates itself: a task must raise nothing else before its events
    are committed or dead-lettered, since Celery rejects a failed task's message without
    requeueing it (acks_late, not acknowledged on failure), and it is gone.
    """

    def decorate(fn: F) -> Task:
        @functools.wraps(fn)
        def run(self: Task, *args: Any, **kwargs: Any) -> Any:
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(
                task_id=self.request.id, task=name, pid=os.getpid()
            )
            # While the broker refuses the retry's publish, the task runs again here, holding
            # its message; this long at most, well inside the hard time limit.
            holding_until = time.monotonic() + settings.task_time_limit_seconds / 2
            attempt = self.request.retries
            while True:
                try:
                    return fn(self, *args, **kwargs)
                except Exception as exc:
                    if classify(exc) is not Failure.TRANSIENT:
                        raise
                    _back_off(exc, attempt)
                    attempt += 1
                    try:
                        raise self.retry(
                            exc=exc, countdown=0, argsrepr=argsrepr(*args), kwargsrepr="{}"
                        ) from exc
                    except Reject as refused:
                        # Celery could not publish the retry and would drop the message
                        # (Reject(requeue=False)): keep it, and run the task again here.
                        log.error("task.retry_not_published", error=repr(refused.reason))
                        if time.monotonic() > holding_until:
                            # Out of time: requeue it; a broker that refuses that too leaves
                            # it unacked, and the visibility timeout brings it back.
                            raise Reject(refused.reason, requeue=True) from exc

        task: Task = app.task(
            name=name,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            ignore_result=True,
            max_retries=None,
        )(run)
        return task

    return decorate


@leadstream_task(name=PROCESS_EVENTS_TASK, argsrepr=envelopes_argsrepr)
def process_events(self: Task, envelopes: list[Any]) -> None:
    """Match, store and publish a batch of events queued by the API."""
    rt = runtime()
    started = time.perf_counter()
    read = read_envelopes(envelopes, now=datetime.now(UTC))
    parsed, stand_ins = read.valid, [m.stand_in for m in read.malformed]
    if parsed or stand_ins:
        # Per message, not per event: the first envelope's ids, and how many came with it.
        first = (parsed or stand_ins)[0]
        structlog.contextvars.bind_contextvars(
            event_id=str(first.id), tenant_id=str(first.tenant_id), events=len(envelopes)
        )
    for wire in read.unstorable:
        # Nothing to store it under (see `Envelopes.unstorable`): the log is all that keeps it.
        log.error("envelope.unstorable", envelope=repr(wire)[:_LOGGED_CHARS])
    try:
        result = rt.run(
            commit_batch(
                rt.engine,
                parsed,
                limits=Limits.of(rt.settings),
                failed_before=int(self.request.retries) > 0,
            )
        )
    except Exception as exc:
        if classify(exc) is Failure.TRANSIENT:
            if not retries_exhausted(self):
                raise
            # Retried for long enough: park the events as dead letters (replayable).
            error = retries_exhausted_error(str(exc))
        else:
            # A bug outside the per-event isolation. A failed task's message is dropped by
            # Celery: park its events as dead letters (replayable) instead.
            log.exception("batch.failed")
            error = processing_error(exc)
        # If even that fails, the database is down and the task keeps retrying.
        result = rt.run(dead_letter_batch(rt.engine, parsed, error=error))
    if read.malformed:
        for m in read.malformed:
            log.error("envelope.malformed", event_id=str(m.stand_in.id), error=m.error.detail)
        result = combine([result, rt.run(dead_letter_malformed(rt.engine, read.malformed))])
    publish_outcomes(rt.redis, [*parsed, *stand_ins], result.outcomes, rt.settings)
    log.info(
        "batch.processed",
        events=len(envelopes),
        created=result.created_events,
        replayed=result.replayed_events,
        failed=result.failed_events,
        malformed=len(read.malformed),
        unstorable=len(read.unstorable),
        bots=result.bot_events,
        ms=round((time.perf_counter() - started) * 1000, 1),
    )
    for tenant_id, visitor_id in result.backfills:
        _send_backfill(str(tenant_id), visitor_id)
    _purge_if_due(rt)


def _visitor_argsrepr(tenant_id: str, visitor_id: str) -> str:
    # The visitor id is the browser's own cookie value: Flower shows only whose it is.
    return f"[{tenant_id!r}, <visitor>]"


@leadstream_task(name=BACKFILL_VISITOR_TASK, argsrepr=_visitor_argsrepr)
def backfill_visitor(self: Task, tenant_id: str, visitor_id: str) -> None:
    """Attach a bounded part of a visitor's earlier anonymous events; send itself again until
    none is left."""
    rt = runtime()
    more = rt.run(
        background.backfill_visitor(
            rt.engine, UUID(tenant_id), visitor_id, rt.settings.backfill_rows_per_transaction
        )
    )
    log.info("backfill.run", tenant_id=tenant_id, more=more)
    if more:
        _send_backfill(tenant_id, visitor_id)


def _send_backfill(tenant_id: str, visitor_id: str) -> None:
    # After commit, and never failing the events' task: if the broker refuses it, the next
    # event of the visitor (which backfills again) sends it.
    try:
        backfill_visitor.apply_async(args=[tenant_id, visitor_id], queue=ACTIVITY_QUEUE)
    except Exception as exc:
        log.error("backfill.not_sent", tenant_id=tenant_id, error=repr(exc))


_next_purge = [0.0]  # this process's clock: monotonic time of its next purge


def _purge_if_due(rt: Runtime) -> None:
    """Purge expired side-table rows every `purge_interval_seconds`, after a batch's outcomes
    are published (so no caller waits for it); a failure waits for the next turn."""
    now = time.monotonic()
    if now < _next_purge[0]:
        return
    _next_purge[0] = now + rt.settings.purge_interval_seconds
    try:
        deleted = rt.run(background.purge_expired(rt.engine, rt.settings, datetime.now(UTC)))
    except Exception as exc:
        log.warning("purge.failed", error=repr(exc))
        return
    if any(deleted.values()):
        log.info("purge.done", **deleted)
