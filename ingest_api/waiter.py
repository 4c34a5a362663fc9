"""Callers waiting for outcomes (`Prefer: wait=N`), served by one subscription per process.

A waiter registers before its event is queued, so a published outcome cannot be missed while
subscribed. After every (re)subscription, and when a wait times out, the stored outcome is read
once more, which covers anything published while the subscription was down.
"""

import asyncio
import contextlib
from collections import defaultdict
from uuid import UUID

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from shared.contract.outcomes import OUTCOME_CHANNEL, StoredOutcome, event_key

log = structlog.get_logger(__name__)


class OutcomeWaiter:
    def __init__(self, client: aioredis.Redis, *, max_waiters: int = 1000) -> None:
        self._client = client
        # Each wait holds a socket and memory: past this, callers are answered 202 at once.
        self._max_waiters = max_waiters
        self._waiters: dict[str, set[asyncio.Future[StoredOutcome]]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="outcome-waiter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def has_room(self) -> bool:
        """Whether one more caller may wait in this process."""
        return sum(map(len, self._waiters.values())) < self._max_waiters

    def register(self, event_id: UUID) -> asyncio.Future[StoredOutcome]:
        future: asyncio.Future[StoredOutcome] = asyncio.get_running_loop().create_future()
        self._waiters[str(event_id)].add(future)
        return future

    def unregister(self, event_id: UUID, future: asyncio.Future[StoredOutcome]) -> None:
        key = str(event_id)
        waiters = self._waiters.get(key)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[key]

    async def wait(
        self, event_id: UUID, future: asyncio.Future[StoredOutcome], timeout: float
    ) -> StoredOutcome | None:
        """The event's final outcome, or None if it is still queued after `timeout` seconds."""
        try:
            stored = await self._read(str(event_id))
            if stored is not None and stored.status != "queued":
                return stored
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            stored = await self._read(str(event_id))
            return stored if stored is not None and stored.status != "queued" else None
        finally:
            self.unregister(event_id, future)

    async def _read(self, event_id: str) -> StoredOutcome | None:
        try:
            raw = await self._client.get(event_key(event_id))
        except RedisError:
            return None
        return StoredOutcome.loads(raw) if raw else None

    def _resolve(self, event_id: str, outcome: StoredOutcome) -> None:
        for future in self._waiters.get(event_id, ()):
            if not future.done():
                future.set_result(outcome)

    async def _catch_up(self) -> None:
        for event_id in list(self._waiters):
            stored = await self._read(event_id)
            if stored is not None and stored.status != "queued":
                self._resolve(event_id, stored)

    def _receive(self, data: bytes) -> None:
        """Resolve the callers an announced outcome answers; a malformed message (a newer
        worker's, or anything else on the channel) is logged and skipped, never fatal."""
        try:
            message = orjson.loads(data)
            event_id = message["id"]
            if event_id not in self._waiters:  # most outcomes: nobody here waits for them
                return
            self._resolve(event_id, StoredOutcome.model_validate(message["outcome"]))
        except (ValueError, KeyError, TypeError) as exc:  # ValidationError is a ValueError
            log.warning("outcome_waiter.malformed_message", error=repr(exc)[:200])

    async def _listen(self) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(OUTCOME_CHANNEL)
                await self._catch_up()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._receive(message["data"])
            except (RedisError, OSError) as exc:
                log.warning("outcome_waiter.disconnected", error=str(exc))
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
