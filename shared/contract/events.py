"""The event a client sends (camelCase on the wire), as the API and the worker validate it.

The worker validates every envelope's payload with the same models, so a payload the API
accepted under an older schema and the current code cannot read fails visibly (dead letter).
"""

from typing import Annotated, Any
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyAddress,
    ValidationInfo,
    model_validator,
)
from pydantic.alias_generators import to_camel

from shared.identity import check_phone, normalize_email

Number = Annotated[int | float, Field(ge=0, le=1e15)]
Url = Annotated[str, Field(min_length=1, max_length=2048)]
ShortText = Annotated[str, Field(max_length=255)]
# Payloads the API already normalised (the worker's input) skip the costly syntax check; the
# result is the same, since normalising is idempotent.
TRUSTED = {"normalized": True}


def _email(value: str, info: ValidationInfo) -> str:
    if info.context is TRUSTED:
        return value.strip().lower()
    return normalize_email(value)


Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]
Phone = Annotated[str, Field(max_length=64), AfterValidator(check_phone)]


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
    """With the string-array format, the first e-mail and the first phone are primary."""

    first_name: ShortText | None = None
    last_name: ShortText | None = None
    emails: list[Annotated[EmailIn, BeforeValidator(_as_contact)]] = Field(
        default_factory=list, max_length=20
    )
    phones: list[Annotated[PhoneIn, BeforeValidator(_as_contact)]] = Field(
        default_factory=list, max_length=20
    )
    tags: list[ShortText] = Field(default_factory=list, max_length=50)
    source: ShortText | None = None
    stage: ShortText | None = None

    def has_identity(self) -> bool:
        return bool(self.emails or self.phones or self.first_name or self.last_name)


class CompanyIn(Contract):
    id: UUID | None = None
    name: Annotated[str, Field(min_length=1, max_length=255)] | None = None
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
    id: ShortText | int | None = None
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


_INT_LIMIT = 2**63  # JSON integers beyond 64 bits cannot be stored or serialised


def _unstorable(value: Any, path: str) -> str | None:
    """Why the first unstorable value (a NUL character, a huge integer) is so, if any."""
    if isinstance(value, str):
        return f"{path or 'a value'} contains a NUL character" if "\x00" in value else None
    # Typed fields have their own bounds; free-form metadata needs this one.
    if (
        isinstance(value, int)
        and path.startswith("metadata")
        and not -_INT_LIMIT < value < _INT_LIMIT
    ):
        return f"{path} is an integer beyond 64 bits"
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
        if (found := _unstorable(item, child)) is not None:
            return found
    return None


class EventIn(Contract):
    """One event as partners, webhooks and browsers send it."""

    type: Annotated[str, Field(min_length=1, max_length=64)]
    person_id: UUID | None = None
    person: PersonIn | None = None
    company: CompanyIn | None = None
    visitor_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    page_url: Url | None = None
    page_title: Annotated[str, Field(max_length=1024)] | None = None
    page_referrer: Url | None = None
    page_duration: Annotated[int, Field(ge=0, le=2**31 - 1)] | None = None
    property: PropertyIn | None = None
    property_search: PropertySearchIn | None = None
    message: Annotated[str, Field(max_length=10_000)] | None = None
    metadata: dict[str, Any] | None = None
    ip_address: IPvAnyAddress | None = None
    user_agent: Annotated[str, Field(max_length=1024)] | None = None
    occurred_at: AwareDatetime | None = None
    sent_at: AwareDatetime | None = None
    source: ShortText | None = None

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        if (problem := _unstorable(data, "")) is not None:
            raise ValueError(f"{problem}, which cannot be stored")
        return data

    @model_validator(mode="after")
    def _someone(self) -> "EventIn":
        has_person = self.person is not None and self.person.has_identity()
        if self.person_id is None and not has_person and self.visitor_id is None:
            raise ValueError(
                "an event needs personId, a person with an e-mail, a phone or a name, or visitorId"
            )
        return self
