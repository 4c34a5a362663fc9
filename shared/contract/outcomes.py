"""The outcome contract between the worker (writer) and the API (reader).

Redis holds in-flight state, not history. `ls:event:<id>` holds `{"tenantId", "status":
"queued"}` from the moment the API queues an event until the worker has committed it; then
the worker deletes it, and the outcome is read from PostgreSQL (`shared.db.reads`). Only two
kinds of outcome are copied into that key, `{"tenantId", "status", "httpStatus", "body"}`
with a short TTL: one a caller waits for (`Prefer: wait`, so the waiting process need not ask
the database), and a keyed duplicate answered by another event's outcome (it has no row of
its own).

Each outcome is announced as a notice of ids and statuses, never the outcome itself:
`{"id", "tenantId", "status", "httpStatus"}` (built by worker/publish_outcomes.lua). Every one
goes to OUTCOME_STREAM for downstream consumers; the channel of `outcome_channel` hears those a
caller may wait for (sent with `Prefer: wait`, or under an Idempotency-Key, whose replays may
wait for it).
`ls:idem:<digest>` holds an Idempotency-Key's record (see `idempotency_key`).
"""

import hashlib
from typing import Any, Literal
from uuid import UUID

import orjson
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from redis.connection import parse_url

OUTCOME_STREAM = "ls:outcomes:stream"

Status = Literal["queued", "processed", "failed"]


def outcome_channel(redis_url: str, deployment: str) -> str:
    """The pub/sub channel of outcome notices. Channels are global to a Redis server, not per
    database: the deployment and the database number keep two installations sharing a server
    (production, staging, a test suite) from hearing each other's outcomes."""
    db = parse_url(redis_url).get("db", 0)
    return f"ls:outcomes:{deployment}:{db}"


def event_key(event_id: UUID | str) -> str:
    return f"ls:event:{event_id}"


def idempotency_key(tenant_id: UUID, key: str) -> bytes:
    """The Redis key of a tenant's Idempotency-Key: a fixed-length digest, so a 255-character
    key costs what a short one does (binary: 8 + 16 bytes)."""
    digest = hashlib.blake2b(tenant_id.bytes + key.encode(), digest_size=16).digest()
    return b"ls:idem:" + digest


def payload_fingerprint(payload: dict[str, Any]) -> bytes:
    """What a request under an Idempotency-Key must repeat: the validated event, keys sorted
    (a client may re-serialise its JSON), without `sentAt` (a retry's own send time)."""
    canonical = orjson.dumps(
        {k: v for k, v in payload.items() if k != "sentAt"}, option=orjson.OPT_SORT_KEYS
    )
    return hashlib.blake2b(canonical, digest_size=16).digest()


def idempotency_record(event_id: UUID, fingerprint: bytes) -> bytes:
    """What an Idempotency-Key holds: the first event's id and its payload's fingerprint."""
    return event_id.bytes + fingerprint


def parse_idempotency_record(record: bytes) -> tuple[UUID, bytes]:
    return UUID(bytes=record[:16]), record[16:]


class StoredOutcome(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    tenant_id: UUID
    status: Status
    http_status: int | None = None
    body: dict[str, Any] | None = None

    def dumps(self) -> bytes:
        # What model_dump(mode="json", by_alias=True, exclude_none=True) gives (exclude_none
        # does not reach into the body), built by hand: the worker dumps one per event.
        data: dict[str, Any] = {"tenantId": str(self.tenant_id), "status": self.status}
        if self.http_status is not None:
            data["httpStatus"] = self.http_status
        if self.body is not None:
            data["body"] = self.body
        return orjson.dumps(data)

    @classmethod
    def loads(cls, raw: bytes | str) -> "StoredOutcome":
        return cls.model_validate(orjson.loads(raw))


def queued_marker(tenant_id: UUID) -> bytes:
    return StoredOutcome(tenant_id=tenant_id, status="queued").dumps()
