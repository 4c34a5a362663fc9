"""Callers waiting for outcomes (`Prefer: wait=N`), served by one subscription per process.

A waiter registers before its event is queued, so a notice cannot be missed while subscribed.
After every (re)subscription, and when a wait times out, the outcome is read once more, which
covers anything published while the subscription was down. Notices carry ids and statuses
only: the outcome is read from Redis's short copy when the worker kept one (the caller waited
when it queued the event), else from PostgreSQL (a keyed replay of an event nobody waited for).

The listener is supervised: whatever ends it, it is restarted with a growing pause, so a bug
or an unexpected message costs the process its waits' speed for a moment, never for good.
"""

import asyncio
import contextlib
from collections import defaultdict
from uuid import UUID

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.contract.outcomes import StoredOutcome, event_key
from shared.db.reads import load_outcomes

log = structlog.get_logger(__name__)

# The listener's pause before a restart: doubled after each failure, back to the first once it
# has run this long without one.
_RESTART_PAUSES = (0.1, 5.0)
_HEALTHY_AFTER_SECONDS = 30.0

Waiting = asyncio.Future[None]


class OutcomeWaiter:
    def __init__(
        self, client: aioredis.Redis, engine: AsyncEngine, channel: str, *, max_waiters: int = 1000
    ) -> None:
        self._client, self._engine, self._channel = client, engine, channel
        # Each wait holds a socket and memory: past this, callers are answered 202 at once.
        self._max_waiters = max_waiters
        self._waiters: dict[str, set[Waiting]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="outcome-waiter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def has_room(self) -> bool:
        """Whether one more caller may wait in this process."""
        return self.waiting() < self._max_waiters

    def waiting(self) -> int:
        """How many callers wait in this process."""
        return sum(map(len, self._waiters.values()))

    def register(self, event_id: UUID) -> Waiting:
        future: Waiting = asyncio.get_running_loop().create_future()
        self._waiters[str(event_id)].add(future)
        return future

    def unregister(self, event_id: UUID, future: Waiting) -> None:
        key = str(event_id)
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[key]

    async def wait(self, event_id: UUID, future: Waiting, timeout: float) -> StoredOutcome | None:
        """The event's final outcome, or None if it is still queued after `timeout` seconds.

        Cancelling the wait (the caller went away) unregisters it at once.
        """
        try:
            if (stored := await self.read(event_id)) is not None:
                return stored
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(future), timeout)
            return await self.read(event_id)
        finally:
            self.unregister(event_id, future)

    async def read(self, event_id: UUID) -> StoredOutcome | None:
        """The event's final outcome if it has one: Redis's copy, else the database once the
        marker is gone; None while it is queued (or cannot be read now)."""
        try:
            raw = await self._client.get(event_key(event_id))
        except RedisError:
            return None
        if raw:
            stored = StoredOutcome.loads(raw)
            return stored if stored.status != "queued" else None
        # The id is this caller's own event or its key's first: no tenant check is needed.
        try:
            async with self._engine.connect() as conn:
                return (await load_outcomes(conn, [event_id])).get(event_id)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("outcome_waiter.read_failed", error=repr(exc)[:200])
            return None

    def _wake(self, event_id: str) -> None:
        for future in self._waiters.get(event_id, ()):
            if not future.done():
                future.set_result(None)

    def _receive(self, data: bytes) -> None:
        """Wake the callers a notice concerns; a malformed one (a newer worker's, or anything
        else on the channel) is logged and skipped, never fatal."""
        try:
            event_id = orjson.loads(data)["id"]
            if event_id in self._waiters:  # most outcomes: nobody here waits for them
                self._wake(event_id)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("outcome_waiter.malformed_message", error=repr(exc)[:200])

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        pause = _RESTART_PAUSES[0]
        while True:
            started = loop.time()
            try:
                await self._listen()
            except Exception:
                log.exception("outcome_waiter.crashed")
            if loop.time() - started > _HEALTHY_AFTER_SECONDS:
                pause = _RESTART_PAUSES[0]
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RESTART_PAUSES[1])

    async def _listen(self) -> None:
        """Listen until the connection fails (then return: the supervisor resubscribes)."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            # Wake every waiter whose outcome exists: it may have been announced unheard.
            for event_id in list(self._waiters):
                if await self.read(UUID(event_id)) is not None:
                    self._wake(event_id)
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._receive(message["data"])
        except (RedisError, OSError) as exc:
            log.warning("outcome_waiter.disconnected", error=str(exc))
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()
