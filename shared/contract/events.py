"""The event a client sends (camelCase on the wire), as the API and the worker validate it.

The worker validates every envelope's payload with the same models, so a payload the API
accepted under an older schema and the current code cannot read fails visibly (dead letter).
"""

import math
from collections.abc import Callable
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any
from uuid import UUID

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    StringConstraints,
    ValidationInfo,
    model_validator,
)
from pydantic.alias_generators import to_camel

from shared.identity import check_phone, company_key, normalize_email

# Integers are strict (`true` is not 1, "10" is not 10) and every one fits PostgreSQL's bigint.
Number = (
    Annotated[int, Field(ge=0, le=10**15, strict=True)]
    | Annotated[float, Field(ge=0, le=1e15, strict=True, allow_inf_nan=False)]
)
BigInt = Annotated[int, Field(ge=-(2**63), le=2**63 - 1, strict=True)]
ShortText = Annotated[str, Field(max_length=255)]
# Payloads the API already normalised (the worker's input) skip the costly syntax check; the
# result is the same, since normalising is idempotent.
TRUSTED = {"normalized": True}
# Each contact point is an advisory lock in the worker's transaction (PostgreSQL's lock table is
# shared by the whole cluster); a person with more is an import, not a lead.
MAX_CONTACTS = 5
# Free-form JSON (metadata) deeper than this is refused: serialisers and PostgreSQL have limits
# of their own (orjson 254 levels), and no real event needs it.
MAX_JSON_DEPTH = 32
# Dates outside this range pin an event to the top or bottom of every timeline.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
# Values that browsers and SDKs send when a variable was never set: they would make every
# stranger one person (Mixpanel refuses the same list).
PLACEHOLDER_IDS = frozenset(
    {
        "undefined",
        "null",
        "none",
        "nil",
        "nan",
        "0",
        "-1",
        "[object object]",
        "{}",
        "[]",
        "anonymous",
        "00000000-0000-0000-0000-000000000000",
    }
)
_PLACEHOLDER_EMAIL_USERS = frozenset(
    {"undefined", "null", "none", "nil", "nan", "noemail", "no-email", "no.email", "unknown"}
)


def _url(value: str) -> str:
    """Only web addresses: `javascript:` or `data:` links would be stored XSS in a CRM's UI."""
    scheme, sep, _ = value.partition(":")
    if sep and scheme.isalpha() and scheme.lower() not in {"http", "https"} and len(scheme) > 1:
        raise ValueError("only http and https URLs are accepted")
    return value


Url = Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_url)]


def _email(value: str, info: ValidationInfo) -> str:
    if info.context is TRUSTED:
        return value.strip().lower()
    email = normalize_email(value)
    if email.partition("@")[0] in _PLACEHOLDER_EMAIL_USERS:
        raise ValueError(f"{email!r} is a placeholder, not an e-mail address")
    return email


def _not_placeholder(what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not value.strip() or value.strip().lower() in PLACEHOLDER_IDS:
            raise ValueError(f"{value!r} is a placeholder, not {what}")
        return value

    return check


def _in_range(value: datetime) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise ValueError(f"must be between {EARLIEST.year} and {LATEST.year}")
    return value


def _ip(value: IPv4Address | IPv6Address) -> IPv4Address | IPv6Address:
    if len(str(value)) > 64:  # the column's width; an IPv6 scope id can be longer
        raise ValueError("the address is longer than 64 characters")
    return value


def _company_name(value: str) -> str:
    if len(company_key(value)) > 255:  # casefold can lengthen a name (ﬃ becomes ffi)
        raise ValueError("the name is too long once case-folded for matching")
    return value


Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]
VisitorId = Annotated[
    str, Field(min_length=1, max_length=128), AfterValidator(_not_placeholder("a visitor id"))
]
# An app's own user id (Segment's userId, PostHog's distinct_id): case-sensitive, as apps'
# ids are, so only trimmed.
ExternalId = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=255),
    AfterValidator(_not_placeholder("an external id")),
]
Phone = Annotated[str, Field(max_length=64), AfterValidator(check_phone)]
Time = Annotated[AwareDatetime, AfterValidator(_in_range)]


class Contract(BaseModel):
    """Base of the public contract: camelCase aliases, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class EmailIn(Contract):
    value: Email
    is_primary: bool | None = None
    type: ShortText | None = None


class PhoneIn(Contract):
    value: Phone
    is_primary: bool | None = None
    type: ShortText | None = None


def _as_contact(entry: Any) -> Any:
    """Sure Send's string-array format: "a@b.com" means {"value": "a@b.com"}."""
    return {"value": entry} if isinstance(entry, str) else entry


class PersonIn(Contract):
    """`externalId` is the app's own user id (Segment's `userId`, PostHog's `distinct_id`):
    case-sensitive, matched before e-mails and phones. With the string-array format, the first
    e-mail and the first phone are primary."""

    external_id: ExternalId | None = None
    first_name: ShortText | None = None
    last_name: ShortText | None = None
    emails: list[Annotated[EmailIn, BeforeValidator(_as_contact)]] = Field(
        default_factory=list, max_length=MAX_CONTACTS
    )
    phones: list[Annotated[PhoneIn, BeforeValidator(_as_contact)]] = Field(
        default_factory=list, max_length=MAX_CONTACTS
    )
    tags: list[ShortText] = Field(default_factory=list, max_length=50)
    source: ShortText | None = None
    stage: ShortText | None = None

    def has_identity(self) -> bool:
        return bool(
            self.external_id or self.emails or self.phones or self.first_name or self.last_name
        )


class CompanyIn(Contract):
    id: UUID | None = None
    name: (
        Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_company_name)] | None
    ) = None
    website: Url | None = None
    industry: ShortText | None = None
    company_size: ShortText | None = None
    description: Annotated[str, Field(max_length=4000)] | None = None

    @model_validator(mode="after")
    def _id_or_name(self) -> "CompanyIn":
        if self.id is None and not (self.name and self.name.strip()):
            raise ValueError("a company needs an id or a name")
        return self


class PropertyIn(Contract):
    id: ShortText | BigInt | None = None
    address: Annotated[str, Field(max_length=1024)] | None = None
    url: Url | None = None
    price: Number | None = None
    beds: Number | None = None
    baths: Number | None = None
    sqft: Number | None = None
    image_url: Url | None = None


class PropertySearchIn(Contract):
    min_price: Number | None = None
    max_price: Number | None = None
    beds: Number | None = None
    baths: Number | None = None
    location: Annotated[str, Field(max_length=1024)] | None = None
    property_type: ShortText | None = None


_KOMBU_TYPED = {"__type__", "__value__"}


def _unstorable(value: Any, path: str, *, numbers: bool = True, depth: int = 0) -> str | None:
    """Why the first value that could not be serialised or stored is so, if any."""
    if isinstance(value, str):
        return f"{path or 'a value'} contains a NUL character" if "\x00" in value else None
    if isinstance(value, bool) or value is None:
        return None
    # Typed fields bound their own numbers (and name themselves in the error); free-form JSON
    # needs these.
    if not numbers and isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return None if -(2**63) <= value < 2**63 else f"{path} is an integer beyond 64 bits"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is not a finite number"
    if depth >= MAX_JSON_DEPTH:
        return f"{path} is nested deeper than {MAX_JSON_DEPTH} levels"
    if isinstance(value, dict) and value.keys() == _KOMBU_TYPED:
        # The worker's Celery decoder (kombu's JSON) reads such an object as a typed value, or
        # fails the whole message, with every event coalesced into it.
        return f"{path} is an object of only __type__ and __value__"
    items: Any = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        child = f"{path}.{key}" if path else str(key)
        if isinstance(key, str) and "\x00" in key:
            return f"the key {child!r} contains a NUL character"
        if (found := _unstorable(item, child, numbers=numbers, depth=depth + 1)) is not None:
            return found
    return None


def metadata_problem(value: dict[str, Any]) -> str | None:
    """Why `value` cannot be stored as an event's metadata, or None if it can."""
    return _unstorable(value, "metadata")


def _free_form(value: dict[str, Any]) -> dict[str, Any]:
    if (problem := metadata_problem(value)) is not None:
        raise ValueError(f"{problem}, which cannot be stored")
    return value


class EventIn(Contract):
    """One event as partners, webhooks and browsers send it."""

    type: Annotated[str, Field(min_length=1, max_length=64)]
    person_id: UUID | None = None
    person: PersonIn | None = None
    company: CompanyIn | None = None
    visitor_id: VisitorId | None = None
    page_url: Url | None = None
    page_title: Annotated[str, Field(max_length=1024)] | None = None
    page_referrer: Url | None = None
    page_duration: Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)] | None = None
    property: PropertyIn | None = None
    property_search: PropertySearchIn | None = None
    message: Annotated[str, Field(max_length=10_000)] | None = None
    metadata: Annotated[dict[str, Any], AfterValidator(_free_form)] | None = None
    ip_address: Annotated[IPvAnyAddress, AfterValidator(_ip)] | None = None
    user_agent: Annotated[str, Field(max_length=1024)] | None = None
    occurred_at: Time | None = None
    sent_at: Time | None = None
    source: ShortText | None = None

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        # What no type checks: NUL characters and absurd depth. orjson finds their absence in
        # C (it escapes a NUL as \u0000 and refuses 255+ levels); only a suspect payload is
        # walked, to name the field. Typed fields' numbers are bounded by their types and
        # metadata by its own validator, which names the field.
        try:
            if b"\\u0000" not in orjson.dumps(data):
                return data
        except (TypeError, orjson.JSONEncodeError):
            pass  # too deep, or a value orjson cannot write: let the walk say which
        typed = (
            {k: v for k, v in data.items() if k != "metadata"} if isinstance(data, dict) else data
        )
        if (problem := _unstorable(typed, "", numbers=False)) is not None:
            raise ValueError(f"{problem}, which cannot be stored")
        return data

    @model_validator(mode="after")
    def _someone(self) -> "EventIn":
        has_person = self.person is not None and self.person.has_identity()
        if self.person_id is None and not has_person and self.visitor_id is None:
            raise ValueError(
                "an event needs personId, a person with an externalId, an e-mail, a phone or a"
                " name, or visitorId"
            )
        return self
