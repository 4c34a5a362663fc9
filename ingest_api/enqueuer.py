"""The API's enqueue policy: lanes per queue, linger, deadlines, over a broker write.

A Celery `.delay()` is synchronous and was measured at ~750 req/s inside an async handler;
here requests that arrive while a write is in flight are coalesced, per queue, into one
message and one Redis round trip.
"""

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any
from uuid import UUID

import kombu
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared.broker.wire import publish_wires, task_message
from shared.contract.outcomes import event_key, idempotency_key, queued_marker
from shared.contract.queues import ACTIVITY_QUEUE, Envelope

_ENQUEUE_SCRIPT = files("shared.broker").joinpath("enqueue.lua").read_text()
_ENQUEUE_KEYED_SCRIPT = files("shared.broker").joinpath("enqueue_keyed.lua").read_text()


class QueueUnavailableError(Exception):
    """The broker did not confirm the event in time; the caller answers 503."""


@dataclass
class _Lane:
    """Events waiting for one queue, and whether a write to it is in flight."""

    queue: str
    pending: list[tuple[Envelope, asyncio.Future[None], float]] = field(default_factory=list)
    flushing: bool = False
    full: asyncio.Event = field(default_factory=asyncio.Event)  # ends a linger early


class Enqueuer:
    """Coalesces concurrent enqueues into one broker write per queue; subclasses write.

    Every write carries a deadline, the moment the first of its callers gives up and answers
    503: a broker that executes the write later (a Redis that hung, then resumed) must not
    queue what the API refused.
    """

    def __init__(
        self,
        *,
        timeout: float,
        marker_ttl: int,
        max_events_per_message: int,
        activity_linger: float = 0.0,
        activity_flush_events: int = 1,
    ) -> None:
        self._timeout = timeout
        self._marker_ttl = marker_ttl
        self._max_events = max_events_per_message
        # A page-view message waits up to `activity_linger` for company, until it holds
        # `activity_flush_events` (Kafka's linger.ms and batch.size): a worker pays far more per
        # message than per event, so one-event messages would cap it at a fraction of what it
        # does with batches. Leads never wait.
        self._linger = {ACTIVITY_QUEUE: activity_linger}
        self._flush_events = {ACTIVITY_QUEUE: activity_flush_events}
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def enqueue(self, envelope: Envelope, *, queue: str) -> None:
        """Return once the broker holds the event; raise QueueUnavailableError otherwise."""
        lane = self._lanes.setdefault(queue, _Lane(queue))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane.pending.append((envelope, done, time.time() + self._timeout))
        if len(lane.pending) >= self._flush_events.get(queue, 1):
            lane.full.set()
        if not lane.flushing:
            lane.flushing = True
            task = asyncio.create_task(self._drain(lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            async with asyncio.timeout(self._timeout):
                await done
        except TimeoutError:
            raise QueueUnavailableError("the queue did not answer in time") from None

    async def enqueue_keyed(
        self, envelope: Envelope, *, queue: str, key: str, key_ttl: int
    ) -> UUID:
        """Queue the event unless `key` already names one; return the id the key names."""
        raise NotImplementedError

    async def enqueue_all(self, by_queue: dict[str, list[Envelope]]) -> None:
        """Queue a client's batch now, in one write: all of it, or (QueueUnavailableError)
        none of it with a Redis broker."""
        deadline = time.time() + self._timeout
        try:
            async with asyncio.timeout(self._timeout):
                await self._write(by_queue, deadline)
        except QueueUnavailableError:
            raise
        except Exception as exc:
            raise QueueUnavailableError(f"the queue is unavailable: {exc!r}") from None

    async def close(self) -> None:
        """Let writes in flight finish, so no caller is left without an answer."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._timeout)

    async def _drain(self, lane: _Lane) -> None:
        # Whatever arrived during one write (or linger) goes out together in the next one.
        linger = self._linger.get(lane.queue, 0.0)
        try:
            while lane.pending:
                if linger and len(lane.pending) < self._flush_events.get(lane.queue, 1):
                    lane.full.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(linger):
                            await lane.full.wait()
                batch, lane.pending = lane.pending, []
                deadline = min(d for _, _, d in batch)
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.time())):
                        await self._write({lane.queue: [e for e, _, _ in batch]}, deadline)
                except Exception as exc:  # every waiter must hear of the failure
                    error = QueueUnavailableError(f"the queue is unavailable: {exc!r}")
                    for _, done, _ in batch:
                        if not done.done():
                            done.set_exception(error)
                            done.exception()  # a waiter that timed out must not warn on GC
                else:
                    for _, done, _ in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            lane.flushing = False

    def _chunks(self, envelopes: list[Envelope]) -> list[list[dict[str, Any]]]:
        wires = [envelope.to_wire() for envelope in envelopes]
        return [wires[i : i + self._max_events] for i in range(0, len(wires), self._max_events)]

    async def _write(self, by_queue: dict[str, list[Envelope]], deadline: float) -> None:
        raise NotImplementedError


class RedisEnqueuer(Enqueuer):
    """Redis broker: markers and Celery messages in one atomic Lua call."""

    def __init__(self, client: aioredis.Redis, **options: Any) -> None:
        super().__init__(**options)
        self._script = client.register_script(_ENQUEUE_SCRIPT)
        self._keyed_script = client.register_script(_ENQUEUE_KEYED_SCRIPT)

    async def _write(self, by_queue: dict[str, list[Envelope]], deadline: float) -> None:
        queues, messages, envelopes = [], [], []
        for queue, queued in by_queue.items():
            for chunk in self._chunks(queued):
                queues.append(queue)
                messages.append(task_message(queue, chunk))
            envelopes += queued
        written = await self._script(
            keys=[*queues, *(event_key(e.id) for e in envelopes)],
            args=[
                self._marker_ttl,
                int(deadline * 1000),
                len(messages),
                *messages,
                *(queued_marker(e.tenant_id) for e in envelopes),
            ],
        )
        if written == -1:
            raise QueueUnavailableError("the queue answered after the deadline")

    async def enqueue_keyed(
        self, envelope: Envelope, *, queue: str, key: str, key_ttl: int
    ) -> UUID:
        deadline = time.time() + self._timeout
        try:
            async with asyncio.timeout(self._timeout):
                owner = await self._keyed_script(
                    keys=[queue, event_key(envelope.id), idempotency_key(envelope.tenant_id, key)],
                    args=[
                        self._marker_ttl,
                        int(deadline * 1000),
                        task_message(queue, self._chunks([envelope])[0]),
                        queued_marker(envelope.tenant_id),
                        str(envelope.id),
                        key_ttl,
                    ],
                )
        except (TimeoutError, RedisError, OSError) as exc:
            raise QueueUnavailableError(f"the queue is unavailable: {exc!r}") from None
        if owner == -1:
            raise QueueUnavailableError("the queue answered after the deadline")
        return UUID(owner.decode() if isinstance(owner, bytes) else str(owner))


class KombuEnqueuer(Enqueuer):
    """Any other Celery broker (RabbitMQ): kombu with publisher confirms, markers in Redis.

    kombu is synchronous and a connection is not thread-safe, so publishing happens on one
    dedicated thread; coalescing keeps that to one publish per queue at a time. A late publish
    cannot be withdrawn here: a 503 may still have been queued (retry with an Idempotency-Key).
    """

    def __init__(self, client: aioredis.Redis, broker_url: str, **options: Any) -> None:
        super().__init__(**options)
        self._redis = client
        self._connection = kombu.Connection(
            broker_url, transport_options={"confirm_publish": True}, connect_timeout=self._timeout
        )
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kombu-publish")

    async def _write(self, by_queue: dict[str, list[Envelope]], deadline: float) -> None:
        # Markers first: the worker overwrites them with the outcome, never the other way round.
        async with self._redis.pipeline(transaction=False) as pipe:
            for envelopes in by_queue.values():
                for e in envelopes:
                    pipe.set(event_key(e.id), queued_marker(e.tenant_id), ex=self._marker_ttl)
            await pipe.execute()
        loop = asyncio.get_running_loop()
        for queue, envelopes in by_queue.items():
            chunks = self._chunks(envelopes)
            await loop.run_in_executor(self._thread, self._publish, queue, chunks)

    async def enqueue_keyed(
        self, envelope: Envelope, *, queue: str, key: str, key_ttl: int
    ) -> UUID:
        redis_key = idempotency_key(envelope.tenant_id, key)
        try:
            async with asyncio.timeout(self._timeout):
                claimed = await self._redis.set(redis_key, str(envelope.id), nx=True, ex=key_ttl)
                first = None if claimed else await self._redis.get(redis_key)
        except (TimeoutError, RedisError, OSError) as exc:
            raise QueueUnavailableError(f"redis is unavailable: {exc!r}") from None
        if first is not None:
            return UUID(first.decode() if isinstance(first, bytes) else first)
        try:
            await self.enqueue(envelope, queue=queue)
        except QueueUnavailableError:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.delete(redis_key)  # a retry must be able to queue it
            raise
        return envelope.id

    def _publish(self, queue: str, chunks: list[list[dict[str, Any]]]) -> None:
        publish_wires(self._connection, queue, chunks)

    async def close(self) -> None:
        await super().close()
        self._thread.shutdown(wait=True)
        self._connection.release()
