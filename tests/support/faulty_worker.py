"""The worker with faults injected, for tests only: `celery -A tests.support.faulty_worker`
(`start_worker(..., app=FAULTY_WORKER)`), each fault turned on by its environment variable.

- LEADSTREAM_TEST_REFUSED_RETRIES=N: the first N retries of `process_events` a pool process
  publishes fail as they do when the broker refuses them (kombu's OperationalError), while the
  broker takes everything else, the consumer's ack or requeue included.
- LEADSTREAM_TEST_COMMIT_BUG=1: `commit_batch` raises a RuntimeError, a bug outside the unit of
  work's per-event isolation.
"""

import os
from typing import Any

import structlog
from celery.app.task import Task
from kombu.exceptions import OperationalError

import worker.tasks
from shared.contract.queues import PROCESS_EVENTS_TASK
from worker.app import app

__all__ = ["FAULTY_WORKER", "app"]

FAULTY_WORKER = __name__

# Per process: a pool process inherits the count when it is forked.
_refusals_left = [int(os.environ.get("LEADSTREAM_TEST_REFUSED_RETRIES", "0"))]
_publish = Task.apply_async
log = structlog.get_logger(__name__)


def _refusing_apply_async(self: Task, *args: Any, **options: Any) -> Any:
    # `Task.retry` publishes the retry through here, with its count in `retries`.
    if self.name == PROCESS_EVENTS_TASK and options.get("retries") and _refusals_left[0] > 0:
        _refusals_left[0] -= 1
        # What the test counts, whatever the task then does with the refusal.
        log.warning("test.retry_refused", left=_refusals_left[0])
        raise OperationalError("OOM command not allowed (injected by the test)")
    return _publish(self, *args, **options)


async def _buggy_commit_batch(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a bug outside the per-event isolation (injected by the test)")


if _refusals_left[0]:
    Task.apply_async = _refusing_apply_async  # type: ignore[method-assign]  # the fault itself
if os.environ.get("LEADSTREAM_TEST_COMMIT_BUG") == "1":
    worker.tasks.commit_batch = _buggy_commit_batch  # type: ignore[assignment]  # the fault
