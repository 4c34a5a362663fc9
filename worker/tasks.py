"""Tasks: thin wrappers that parse the message and hand over to processing."""

import time
from typing import Any

import structlog
from celery import Task

from shared.contract.queues import PROCESS_EVENTS_TASK, Envelope
from worker.app import leadstream_task, runtime
from worker.errors import TransientError
from worker.processing import commit_batch, dead_letter_batch, publish_outcomes

log = structlog.get_logger(__name__)


@leadstream_task(name=PROCESS_EVENTS_TASK)
def process_events(self: Task, envelopes: list[dict[str, Any]]) -> None:
    """Match, store and publish a batch of events queued by the API."""
    parsed = [Envelope.model_validate(e) for e in envelopes]
    rt = runtime()
    started = time.perf_counter()
    try:
        result = rt.run(commit_batch(rt.engine, parsed))
    except TransientError as exc:
        if self.request.retries < rt.settings.task_max_retries:
            raise
        # Retried for long enough: park the events as dead letters (replayable). If even that
        # fails, the database is down and the task keeps retrying: nothing is dropped.
        result = rt.run(dead_letter_batch(rt.engine, parsed, detail=str(exc)))
    publish_outcomes(rt.redis, parsed, result.outcomes, rt.settings)
    log.info(
        "batch.processed",
        events=len(parsed),
        created=result.created_events,
        replayed=result.replayed_events,
        failed=result.failed_events,
        ms=round((time.perf_counter() - started) * 1000, 1),
    )
