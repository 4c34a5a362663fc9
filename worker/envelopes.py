"""Reading a message's envelopes: each validated alone, so a malformed one never fails its
neighbours, and what of a malformed one can name its dead letter."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from shared.contract.queues import Envelope
from shared.ids import derived_id
from worker.errors import EventFailedError, malformed_envelope_error


@dataclass(frozen=True)
class Malformed:
    """An envelope that does not validate, named for its dead letter."""

    # Its id, tenant and `notify` as far as they parse (no payload): what its lock, dead letter
    # and outcome are named by.
    stand_in: Envelope
    wire: Any  # the envelope as queued, kept in the dead letter
    error: EventFailedError


@dataclass
class Envelopes:
    valid: list[Envelope] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)
    # No tenant to store them under: dead letters belong to a tenant (NOT NULL), and a tenant
    # guessed would show one tenant another's data. The API always sets it, so these did not
    # come from it.
    unstorable: list[Any] = field(default_factory=list)


def read_envelopes(wires: list[Any], *, now: datetime) -> Envelopes:
    """Validate every envelope of a message on its own."""
    read = Envelopes()
    for wire in wires:
        try:
            read.valid.append(Envelope.model_validate(wire))
        except ValidationError as exc:
            salvaged = salvage(wire, malformed_envelope_error(exc), now=now)
            if salvaged is None:
                read.unstorable.append(wire)
            else:
                read.malformed.append(salvaged)
    return read


def salvage(wire: Any, error: EventFailedError, *, now: datetime) -> Malformed | None:
    """A malformed envelope named by its own id and tenant; None if it has no usable tenant.

    Without a usable id it gets one derived from its content: a redelivery of the message
    names the same dead letter, which is then stored once.
    """
    fields = wire if isinstance(wire, dict) else {}
    tenant_id = _uuid(fields.get("tenantId", fields.get("tenant_id")))
    if tenant_id is None:
        return None
    # Its time is unknown: 0, so the id depends on the content alone.
    event_id = _uuid(fields.get("id")) or derived_id(0, repr(wire).encode())
    stand_in = Envelope(
        id=event_id,
        tenant_id=tenant_id,
        received_at=now,
        payload={},
        notify=fields.get("notify") is True,
    )
    return Malformed(stand_in, wire, error)


def _uuid(value: Any) -> UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return UUID(value)
    except ValueError:
        return None
