"""A stand-in broker writer, for tests of what the API does before the broker."""

import asyncio
import uuid
from collections.abc import Mapping

from shared.broker.wire import task_message
from shared.broker.writers import Claim
from shared.contract.queues import Envelope


class StandInWriter:
    """Records what it is given (the events, each write's size and timeout, and the task
    message each queue's events make, serialised as the Redis writer serialises them, so an
    event that cannot be written fails the whole write as it would there); raises `fail` after
    recording (only for writes holding one of `fail_for`, if given), or hangs until `release`
    is set. Claims are kept like Redis keeps them: the first event under a key owns it."""

    def __init__(
        self,
        fail: Exception | None = None,
        *,
        hang: bool = False,
        fail_for: set[uuid.UUID] | None = None,
    ) -> None:
        self.fail_for = fail_for
        self.written: list[Envelope] = []
        self.writes: list[tuple[int, float]] = []
        self.messages: list[bytes] = []
        self.keys: dict[bytes, bytes] = {}
        self.fail, self.hang = fail, hang
        self.release = asyncio.Event()

    async def write(
        self,
        by_queue: dict[str, list[Envelope]],
        timeout: float,
        claims: Mapping[uuid.UUID, Claim] | None = None,
    ) -> dict[uuid.UUID, bytes]:
        self.writes.append((sum(map(len, by_queue.values())), timeout))
        for queue, queued in by_queue.items():
            self.messages.append(task_message(queue, [e.to_wire() for e in queued]))
        if self.hang:
            await self.release.wait()
        ids = {e.id for envelopes in by_queue.values() for e in envelopes}
        if self.fail is not None and (self.fail_for is None or ids & self.fail_for):
            raise self.fail
        taken: dict[uuid.UUID, bytes] = {}
        for e in (e for envelopes in by_queue.values() for e in envelopes):
            claim = (claims or {}).get(e.id)
            if claim is not None and claim.key in self.keys:
                taken[e.id] = self.keys[claim.key]
                continue
            if claim is not None:
                self.keys[claim.key] = claim.record
            self.written.append(e)
        return taken

    async def close(self) -> None:
        pass
