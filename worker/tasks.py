"""Tasks: thin wrappers that parse the message and hand over to processing."""

import time
from typing import Any

import structlog
from celery import Task

from shared.queue import PROCESS_EVENTS_TASK, Envelope
from worker.app import leadstream_task, runtime
from worker.processing import commit_batch, publish_outcomes

log = structlog.get_logger(__name__)


@leadstream_task(name=PROCESS_EVENTS_TASK)
def process_events(self: Task, envelopes: list[dict[str, Any]]) -> None:
    """Match, store and publish a batch of events queued by the API."""
    parsed = [Envelope.model_validate(e) for e in envelopes]
    rt = runtime()
    started = time.perf_counter()
    result = rt.run(commit_batch(rt.engine, parsed))
    publish_outcomes(rt.redis, parsed, result.outcomes, rt.settings)
    log.info(
        "batch.processed",
        events=len(parsed),
        created=result.created_events,
        replayed=result.replayed_events,
        failed=result.failed_events,
        ms=round((time.perf_counter() - started) * 1000, 1),
    )
