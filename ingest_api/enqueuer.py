"""The API's enqueue policy: lanes per queue, linger, time limits, over a broker writer.

A Celery `.delay()` is synchronous and was measured at ~750 req/s inside an async handler;
here requests that arrive while a write is in flight are coalesced, per queue, into one
message and one broker round trip; so are requests under an Idempotency-Key, each with its own
answer (a burst of keyed requests used to take one Redis connection each, and 503 when the
pool ran out).
"""

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.broker.writers import BrokerWriter, Claim, QueueUnavailableError, write_bound
from shared.contract.queues import Envelope

Taken = bytes | None  # the record of the key that named another event, or None: queued
_Pending = tuple[Envelope, Claim | None, asyncio.Future[Taken]]


def _give_up(done: asyncio.Future[Taken]) -> None:
    if not done.done():
        done.set_exception(QueueUnavailableError("the queue did not answer in time"))


@dataclass
class _Lane:
    """Events waiting for one queue, and whether a write to it is in flight."""

    queue: str
    linger: float
    flush_events: int
    pending: list["_Pending"] = field(default_factory=list)
    flushing: bool = False
    full: asyncio.Event = field(default_factory=asyncio.Event)  # ends a linger early


class Enqueuer:
    """Coalesces concurrent enqueues into one broker write per queue.

    Each write gives the broker `timeout` seconds from the moment it is sent, and its writer
    answers within `write_bound(timeout)`; a caller waits for the write in flight, its linger
    and its own write at most.
    QueueUnavailableError means 503; any other exception is a bug and reaches the caller as
    itself.
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

    async def enqueue(self, envelope: Envelope, *, queue: str, claim: Claim | None = None) -> Taken:
        """Return once the broker holds the event (None), or, with a claim whose key is taken,
        the key's record (nothing queued); raise QueueUnavailableError otherwise."""
        lane = self._lanes.get(queue) or self._lanes.setdefault(queue, self._lane(queue))
        done: asyncio.Future[Taken] = asyncio.get_running_loop().create_future()
        lane.pending.append((envelope, claim, done))
        if len(lane.pending) >= lane.flush_events:
            lane.full.set()
        if not lane.flushing:
            lane.flushing = True
            task = asyncio.create_task(self._drain(lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # The writer answers by its bound, and this caller's write waits at most for the one in
        # flight: the guard fires only for a writer that breaks its bound, never while a write
        # that may still succeed is in flight (that 503 would be a lie).
        guard = lane.linger + 2 * write_bound(self._timeout)
        timer = done.get_loop().call_later(guard, _give_up, done)
        try:
            return await done
        finally:
            timer.cancel()

    async def enqueue_all(self, by_queue: dict[str, list[Envelope]]) -> None:
        """Queue a client's batch now, in one write: all of it, or (QueueUnavailableError)
        none of it with a Redis broker."""
        await self._writer.write(by_queue, self._timeout)

    async def close(self) -> None:
        """Let writes in flight finish, so no caller is left without an answer."""
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=write_bound(self._timeout))
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
                try:
                    await self._write(lane.queue, batch)
                except QueueUnavailableError as exc:
                    _fail(batch, exc)  # the broker failed them all
                except Exception as exc:
                    if len(batch) == 1:
                        _fail(batch, exc)
                        continue
                    # A bug that one event may have caused (no broker error): each is written
                    # alone, so only the culprit's caller hears of it. A part the failed write
                    # queued is queued again under the same ids, which the worker stores once.
                    for item in batch:
                        try:
                            await self._write(lane.queue, [item])
                        except Exception as alone:
                            _fail([item], alone)
        finally:
            lane.flushing = False

    async def _write(self, queue: str, batch: list[_Pending]) -> None:
        claims = {e.id: claim for e, claim, _ in batch if claim is not None}
        envelopes = [e for e, _, _ in batch]
        taken = await self._writer.write({queue: envelopes}, self._timeout, claims)
        for e, _, done in batch:
            if not done.done():
                done.set_result(taken.get(e.id))


def _fail(batch: list[_Pending], exc: Exception) -> None:
    """Each waiter hears `exc` as it is: a 503 (QueueUnavailableError), or the bug."""
    for _, _, done in batch:
        if not done.done():
            done.set_exception(exc)
            done.exception()  # a waiter that timed out must not warn on GC
