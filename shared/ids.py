"""Ids for events, people, companies and tenants: UUIDv7, so ids sort by creation time."""

import hashlib
import uuid

import uuid_utils.compat


def new_id() -> uuid.UUID:
    return uuid_utils.compat.uuid7()


def derived_id(unix_ms: int, seed: bytes) -> uuid.UUID:
    """A UUIDv7 whose time is `unix_ms` and whose random bits come from `seed`: the same seed
    always gives the same id, so a request delivered twice names the same events (and the
    worker, which never inserts an id twice, stores them once)."""
    bits = int.from_bytes(hashlib.sha256(seed).digest()[:10], "big")  # 80 bits, 74 used
    rand_a, rand_b = bits >> 68, bits & (2**62 - 1)
    value = (unix_ms & (2**48 - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)
