"""The one task decorator with the retry policy, and the task: parse, hand over, publish."""

import functools
import os
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from celery import Task
from celery.exceptions import Reject

from shared.broker.wire import envelopes_argsrepr
from shared.contract.queues import PROCESS_EVENTS_TASK, Envelope
from worker.app import app, runtime, settings
from worker.errors import Failure, classify, processing_error, retries_exhausted_error
from worker.unit_of_work import commit_batch, dead_letter_batch, publish_outcomes

log = structlog.get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


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
    which the unit of work isolates itself.
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
def process_events(self: Task, envelopes: list[dict[str, Any]]) -> None:
    """Match, store and publish a batch of events queued by the API."""
    parsed = [Envelope.model_validate(e) for e in envelopes]
    if parsed:
        # Per message, not per event: the first envelope's ids, and how many came with it.
        first = parsed[0]
        structlog.contextvars.bind_contextvars(
            event_id=str(first.id), tenant_id=str(first.tenant_id), events=len(parsed)
        )
    rt = runtime()
    started = time.perf_counter()
    try:
        result = rt.run(commit_batch(rt.engine, parsed))
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
    publish_outcomes(rt.redis, parsed, result.outcomes, rt.settings)
    log.info(
        "batch.processed",
        events=len(parsed),
        created=result.created_events,
        replayed=result.replayed_events,
        failed=result.failed_events,
        ms=round((time.perf_counter() - started) * 1000, 1),
    )
