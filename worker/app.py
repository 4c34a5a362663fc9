"""The Celery app: its configuration and the per-process runtime (tasks are in tasks.py)."""

import asyncio
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis
from celery import Celery
from celery.signals import worker_process_init, worker_process_shutdown
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contract.queues import ACTIVITY_QUEUE, kombu_queues
from shared.db.engine import create_engine
from shared.logging import configure_logging
from shared.settings import Settings, get_settings
from worker import broker

settings = get_settings()
configure_logging(settings)

RESTORE_SWEEP_SECONDS = 5

app = Celery("leadstream", broker=settings.celery_broker_url, include=["worker.tasks"])
app.conf.update(
    # At-least-once delivery; the tasks make it exactly-once in effect.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    # `leads` is listed first and polled first, so a page-view burst cannot delay a lead.
    task_queues=kombu_queues("redis" if settings.broker_is_redis else "amqp"),
    task_default_queue=ACTIVITY_QUEUE,
    broker_transport_options={
        "queue_order_strategy": "priority",
        # An unacked message is redelivered after this: longer than any task may run.
        "visibility_timeout": settings.visibility_timeout_seconds,
        # Look for messages a dead worker held every RESTORE_SWEEP_SECONDS: kombu's default
        # (10 s x a throttle of 10) let them wait 100 s past the visibility timeout.
        "unacked_restore_interval": RESTORE_SWEEP_SECONDS,
        "unacked_restore_throttle": 1,
    },
    broker_connection_retry_on_startup=True,
    # No soft limit: its exception can strike mid-transaction or mid-backoff, and Celery acks a
    # task that fails that way. Statements have their own timeouts instead; the hard limit
    # kills the process, and a task that fails or times out is NOT acknowledged, so its
    # message comes back after the visibility timeout instead of being lost.
    task_time_limit=settings.task_time_limit_seconds,
    task_acks_on_failure_or_timeout=False,
    # Task events cost about half the consumer's CPU (bench/): off unless a running Flower
    # turns them on (it sends `enable_events` to the workers periodically).
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
)
if settings.broker_is_redis:
    broker.install()  # an upstream bug worked around
if settings.task_time_limit_seconds >= settings.visibility_timeout_seconds:
    raise RuntimeError("visibility_timeout must exceed the task time limit, or tasks run twice")


T = TypeVar("T")
_Handler = Callable[..., None]


def _on(signal: Any) -> Callable[[_Handler], _Handler]:
    """`signal.connect` as a typed decorator (Celery's signals are untyped)."""
    return cast(Callable[[_Handler], _Handler], signal.connect)


@dataclass
class Runtime:
    """One event loop, database engine and Redis client per worker process."""

    pid: int
    loop: asyncio.AbstractEventLoop
    engine: AsyncEngine
    redis: redis.Redis
    settings: Settings

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """This process's runtime, made on first use after a fork (never inherited from a parent)."""
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = Runtime(
            pid=os.getpid(),
            loop=asyncio.new_event_loop(),
            # No pre-ping: a connection that died fails its batch, which is retried.
            engine=create_engine(settings, pool_size=2, pre_ping=False),
            redis=redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=5,
                socket_connect_timeout=2,
                retry=Retry(ExponentialBackoff(cap=1.0), 3),
            ),
            settings=settings,
        )
    return _runtime


@_on(worker_process_init)
def _init_process(**_: Any) -> None:
    runtime()


@_on(worker_process_shutdown)
def _shutdown_process(**_: Any) -> None:
    if _runtime is not None and _runtime.pid == os.getpid():
        _runtime.run(_runtime.engine.dispose())
        _runtime.redis.close()
