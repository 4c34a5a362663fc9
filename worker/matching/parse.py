"""An envelope's payload, validated and with its identities normalised for its tenant."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from pydantic import ValidationError

from shared.contract.events import TRUSTED, EmailIn, EventIn, PhoneIn
from shared.contract.queues import Envelope
from shared.identity import company_key, is_valid_phone, normalize_phone
from worker.errors import EventFailedError


@dataclass(frozen=True)
class Contact:
    value: str
    is_primary: bool
    type: str | None


@dataclass
class ParsedEvent:
    """One envelope with its payload parsed and identities normalised for its tenant."""

    envelope: Envelope
    event: EventIn
    emails: list[Contact]
    phones: list[Contact]  # valid numbers: identity keys
    company_key: str | None
    # Numbers not valid for the tenant's region: kept on the person, never matched.
    unverified_phones: list[Contact] = field(default_factory=list)

    @property
    def tenant_id(self) -> UUID:
        return self.envelope.tenant_id


def _contacts(raw: Sequence[EmailIn | PhoneIn], normalize: Callable[[str], str]) -> list[Contact]:
    """Normalised, de-duplicated contact points; exactly one primary (first marked, else first)."""
    seen: dict[str, Contact] = {}
    marked: str | None = None
    for entry in raw:
        value, flagged, kind = normalize(entry.value), bool(entry.is_primary), entry.type
        if value in seen:
            continue
        seen[value] = Contact(value, False, kind)
        if flagged and marked is None:
            marked = value
    primary = marked or next(iter(seen), None)
    return [Contact(c.value, c.value == primary, c.type) for c in seen.values()]


def parse(envelope: Envelope, region: str) -> ParsedEvent:
    """Validate the payload with the public schema; raise EventFailedError if it cannot be read."""
    try:
        event = EventIn.model_validate(envelope.payload, context=TRUSTED)
    except ValidationError as exc:
        raise EventFailedError(
            "invalid_payload", 422, "Invalid payload", f"the worker cannot read this event: {exc}"
        ) from None
    person = event.person
    emails = _contacts(person.emails, lambda v: v) if person else []
    phones: list[Contact] = []
    unverified: list[Contact] = []
    if person:
        checked = [(p, is_valid_phone(p.value, region)) for p in person.phones]
        phones = _contacts([p for p, ok in checked if ok], lambda v: normalize_phone(v, region))
        # Never primary: the primary phone is the identity a person is known by.
        unverified = [
            Contact(c.value, False, c.type)
            for c in _contacts(
                [p for p, ok in checked if not ok], lambda v: normalize_phone(v, region)
            )
        ]
    key = company_key(event.company.name) if event.company and event.company.name else None
    return ParsedEvent(envelope, event, emails, phones, key, unverified)
