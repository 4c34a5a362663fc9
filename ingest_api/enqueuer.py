"""The API's enqueue policy: lanes per queue, linger, deadlines, over a broker writer.

A Celery `.delay()` is synchronous and was measured at ~750 req/s inside an async handler;
here requests that arrive while a write is in flight are coalesced, per queue, into one
message and one broker round trip.
"""

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from uuid import UUID

from shared.broker.writers import BrokerWriter, QueueUnavailableError
from shared.contract.queues import Envelope


@dataclass
class _Lane:
    """Events waiting for one queue, and whether a write to it is in flight."""

    queue: str
    linger: float
    flush_events: int
    pending: list[tuple[Envelope, asyncio.Future[None], float]] = field(default_factory=list)
    flushing: bool = False
    full: asyncio.Event = field(default_factory=asyncio.Event)  # ends a linger early


class Enqueuer:
    """Coalesces concurrent enqueues into one broker write per queue.

    Every write carries a deadline, the moment the first of its callers gives up and answers
    503: a broker that executes the write later (a Redis that hung, then resumed) must not
    queue what the API refused. QueueUnavailableError means 503; any other exception is a bug
    and reaches the caller as itself.
    """

    def __init__(
        self,
        writer: BrokerWriter,
        *,
        timeout: float,
        linger: Mapping[str, float] | None = None,
        flush_events: Mapping[str, int] | None = None,
    ) -> None:
        """A queue's message waits up to `linger[queue]` seconds for company, until it holds
        `flush_events[queue]` events (Kafka's linger.ms and batch.size); other queues never wait.
        """
        self._writer = writer
        self._timeout = timeout
        self._linger = dict(linger or {})
        self._flush_events = dict(flush_events or {})
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def enqueue(self, envelope: Envelope, *, queue: str) -> None:
        """Return once the broker holds the event; raise QueueUnavailableError otherwise."""
        lane = self._lanes.get(queue) or self._lanes.setdefault(queue, self._lane(queue))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        lane.pending.append((envelope, done, time.time() + self._timeout))
        if len(lane.pending) >= lane.flush_events:
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
        return await self._writer.write_keyed(
            envelope, queue, key, key_ttl, time.time() + self._timeout
        )

    async def enqueue_all(self, by_queue: dict[str, list[Envelope]]) -> None:
        """Queue a client's batch now, in one write: all of it, or (QueueUnavailableError)
        none of it with a Redis broker."""
        await self._writer.write(by_queue, time.time() + self._timeout)

    async def close(self) -> None:
        """Let writes in flight finish, so no caller is left without an answer."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self._timeout)
        await self._writer.close()

    def _lane(self, queue: str) -> _Lane:
        return _Lane(queue, self._linger.get(queue, 0.0), self._flush_events.get(queue, 1))

    async def _drain(self, lane: _Lane) -> None:
        # Whatever arrived during one write (or linger) goes out together in the next one.
        try:
            while lane.pending:
                if lane.linger and len(lane.pending) < lane.flush_events:
                    lane.full.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(lane.linger):
                            await lane.full.wait()
                batch, lane.pending = lane.pending, []
                deadline = min(d for _, _, d in batch)
                try:
                    await self._writer.write({lane.queue: [e for e, _, _ in batch]}, deadline)
                except Exception as exc:  # every waiter hears of it: a 503, or the bug as is
                    for _, done, _ in batch:
                        if not done.done():
                            done.set_exception(exc)
                            done.exception()  # a waiter that timed out must not warn on GC
                else:
                    for _, done, _ in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            lane.flushing = False
