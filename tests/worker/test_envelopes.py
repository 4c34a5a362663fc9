"""Reading a message's envelopes: each on its own, a malformed one named for its dead letter."""

import uuid
from datetime import UTC, datetime
from typing import Any

from shared.contract.queues import Envelope
from worker.envelopes import read_envelopes

NOW = datetime(2024, 5, 1, tzinfo=UTC)


def _wire(**fields: Any) -> dict[str, Any]:
    base = Envelope(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        received_at=NOW,
        payload={"type": "page_view"},
    ).to_wire()
    return {**base, **fields}


def test_a_malformed_envelope_keeps_its_own_id_and_tenant_and_never_fails_the_others() -> None:
    good = _wire()
    bad = _wire(receivedAt="yesterday", payload="not an object", notify=True)

    read = read_envelopes([good, bad], now=NOW)

    assert [e.to_wire() for e in read.valid] == [good]
    (malformed,) = read.malformed
    assert malformed.wire is bad
    assert str(malformed.stand_in.id) == bad["id"]
    assert str(malformed.stand_in.tenant_id) == bad["tenantId"]
    assert malformed.stand_in.notify is True
    assert malformed.error.reason == "malformed_envelope"
    # Where and why, never the values sent.
    assert "receivedAt" in malformed.error.detail and "payload" in malformed.error.detail
    assert "yesterday" not in malformed.error.detail
    assert read.unstorable == []


def test_an_envelope_without_a_usable_id_gets_one_derived_from_its_content() -> None:
    bad = _wire(id="not-a-uuid", payload=[1, 2])

    first = read_envelopes([bad], now=NOW).malformed[0].stand_in.id
    again = read_envelopes([dict(bad)], now=datetime.now(UTC)).malformed[0].stand_in.id
    other = read_envelopes([{**bad, "payload": [3]}], now=NOW).malformed[0].stand_in.id

    assert first == again != other


def test_an_envelope_without_a_usable_tenant_is_unstorable() -> None:
    no_tenant = {k: v for k, v in _wire().items() if k != "tenantId"}
    bad_tenant = _wire(tenantId="acme")

    read = read_envelopes([no_tenant, bad_tenant, "not an envelope", None], now=NOW)

    assert read.valid == [] and read.malformed == []
    assert read.unstorable == [no_tenant, bad_tenant, "not an envelope", None]
