"""A stand-in broker writer, for tests of what the API does before the broker."""

import asyncio
import uuid

from shared.contract.queues import Envelope


class StandInWriter:
    """Records what it is given (the events, and each write's size and deadline); raises
    `fail` after recording, or hangs until `release` is set."""

    def __init__(self, fail: Exception | None = None, *, hang: bool = False) -> None:
        self.written: list[Envelope] = []
        self.writes: list[tuple[int, float]] = []
        self.fail, self.hang = fail, hang
        self.release = asyncio.Event()

    async def write(self, by_queue: dict[str, list[Envelope]], deadline: float) -> None:
        self.writes.append((sum(map(len, by_queue.values())), deadline))
        if self.hang:
            await self.release.wait()
        if self.fail is not None:
            raise self.fail
        self.written += [e for envelopes in by_queue.values() for e in envelopes]

    async def write_keyed(
        self, envelope: Envelope, queue: str, key: str, key_ttl: int, deadline: float
    ) -> uuid.UUID:
        await self.write({queue: [envelope]}, deadline)
        return envelope.id

    async def close(self) -> None:
        pass
