"""Tables. Every row carries tenant_id and every unique key starts with it."""

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Timestamp = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _tenant_fk() -> Mapped[uuid.UUID]:
    return mapped_column(UUID, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False)


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    # Region for phone numbers written without a country code (ISO 3166 alpha-2).
    default_region: Mapped[str] = mapped_column(String(2))
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=text("now()"))
    # A disabled tenant's tokens are refused by the API (`leadstream tenant disable`).
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    # Tokens minted with a lower `ver` claim are revoked (`leadstream token revoke`).
    token_version: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class Company(Base):
    __tablename__ = "companies"
    __table_args__ = (UniqueConstraint("tenant_id", "name_key"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    name: Mapped[str] = mapped_column(String(255))
    # shared.identity.company_key(name): what "the same company" means.
    name_key: Mapped[str] = mapped_column(String(255))
    website: Mapped[str | None] = mapped_column(Text)
    industry: Mapped[str | None] = mapped_column(String(255))
    company_size: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class Person(Base):
    __tablename__ = "people"
    __table_args__ = (Index("ix_people_tenant_id_created_at", "tenant_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    first_name: Mapped[str | None] = mapped_column(String(255))
    last_name: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    source: Mapped[str | None] = mapped_column(String(255))
    stage: Mapped[str | None] = mapped_column(String(255))
    company_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID, ForeignKey("companies.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class _ContactPoint:
    """Columns shared by e-mails and phones: the normalised value is unique per tenant."""

    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    value: Mapped[str] = mapped_column(String(320), primary_key=True)
    type: Mapped[str | None] = mapped_column(String(255))
    is_primary: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class PersonEmail(_ContactPoint, Base):
    __tablename__ = "person_emails"

    person_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("people.id", ondelete="CASCADE"), index=True
    )


class PersonPhone(_ContactPoint, Base):
    __tablename__ = "person_phones"

    person_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("people.id", ondelete="CASCADE"), index=True
    )


class PersonExternalId(Base):
    """An app's own id for a person (Segment's userId, PostHog's distinct_id), as sent."""

    __tablename__ = "person_external_ids"

    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    value: Mapped[str] = mapped_column(String(255), primary_key=True)
    # Unique: a person is one app user, and matching never merges two external ids, so a race
    # that slipped past the locks fails here and its rerun sees the winner.
    person_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("people.id", ondelete="CASCADE"), index=True, unique=True
    )
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class PersonUnverifiedPhone(Base):
    """A phone number that is not valid for the tenant's region: kept as a contact point of
    its person, but never an identity (shared by many, e.g. `000-000-0000`), so never unique."""

    __tablename__ = "person_unverified_phones"

    person_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("people.id", ondelete="CASCADE"), primary_key=True
    )
    value: Mapped[str] = mapped_column(String(320), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    type: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class Visitor(Base):
    """An anonymous browser id, once it has been tied to a person."""

    __tablename__ = "visitors"

    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    visitor_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    person_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("people.id", ondelete="CASCADE"), index=True
    )
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        # A person's timeline, newest first; it also serves the person foreign key's ON DELETE
        # SET NULL. Anonymous rows (most page views) stay out of it.
        Index(
            "ix_events_timeline",
            "person_id",
            "occurred_at",
            "id",
            postgresql_where=text("person_id IS NOT NULL"),
        ),
        # The timeline filtered by `type=`.
        Index(
            "ix_events_timeline_type",
            "person_id",
            "event_type",
            "occurred_at",
            "id",
            postgresql_where=text("person_id IS NOT NULL"),
        ),
        # The company foreign key's ON DELETE SET NULL.
        Index(
            "ix_events_company_id", "company_id", postgresql_where=text("company_id IS NOT NULL")
        ),
        # A visitor's anonymous events, newest first, for the backfill.
        Index(
            "ix_events_anonymous_visitor",
            "tenant_id",
            "visitor_id",
            "occurred_at",
            postgresql_where=text("person_id IS NULL"),
        ),
    )

    # Fixed by the API at ingest (UUIDv7), so a redelivered message cannot insert twice.
    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    tenant_id: Mapped[uuid.UUID] = _tenant_fk()
    person_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID, ForeignKey("people.id", ondelete="SET NULL")
    )
    company_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID, ForeignKey("companies.id", ondelete="SET NULL")
    )
    visitor_id: Mapped[str | None] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(Timestamp)
    received_at: Mapped[datetime] = mapped_column(Timestamp)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    source: Mapped[str | None] = mapped_column(String(255))
    page_url: Mapped[str | None] = mapped_column(Text)
    page_title: Mapped[str | None] = mapped_column(Text)
    page_referrer: Mapped[str | None] = mapped_column(Text)
    page_duration: Mapped[int | None] = mapped_column(Integer)
    property: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    property_search: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    message: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSONB)
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(Text)
    # The outcome as first computed, so a redelivery re-publishes the same answer.
    was_person_created: Mapped[bool] = mapped_column(Boolean)
    was_company_created: Mapped[bool | None] = mapped_column(Boolean)
    match_conflict: Mapped[list[str] | None] = mapped_column(JSONB)
    # A known crawler's or headless browser's User-Agent: kept, and left out where asked.
    bot: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # What the client's clock said, as sent; occurred_at is what the worker made of it.
    client_occurred_at: Mapped[datetime | None] = mapped_column(Timestamp)
    sent_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Why occurred_at differs from client_occurred_at: its clock was off by more than the
    # tolerance ('corrected'), or it claimed the far future ('clamped').
    clock_adjustment: Mapped[str | None] = mapped_column(String(16))


class IdempotencyKey(Base):
    """The database's last line of defence behind the API's Redis check; purged after the
    same TTL."""

    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID)
    created_at: Mapped[datetime] = mapped_column(Timestamp, index=True)


class DeadLetter(Base):
    """An event that cannot succeed, kept with its reason for inspection and replay."""

    __tablename__ = "dead_letters"

    event_id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    # No foreign key: an event of a since-deleted tenant is still kept here.
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID, index=True)
    reason: Mapped[str] = mapped_column(String(64), index=True)
    problem: Mapped[dict[str, Any]] = mapped_column(JSONB)
    envelope: Mapped[dict[str, Any]] = mapped_column(JSONB)
    failed_at: Mapped[datetime] = mapped_column(Timestamp, index=True)
    replayed_at: Mapped[datetime | None] = mapped_column(Timestamp)


class Site(Base):
    """A public site key: write-only, for one tenant's pages on its allowed origins."""

    __tablename__ = "sites"
    __table_args__ = (
        CheckConstraint("ip_policy IN ('keep', 'truncate', 'drop')", name="ip_policy"),
    )

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(
        UUID, ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    # Exactly as browsers send `Origin`: scheme://host[:port], lower case.
    origins: Mapped[list[str]] = mapped_column(ARRAY(Text))
    ip_policy: Mapped[str] = mapped_column(String(8), server_default=text("'truncate'"))
    # NULL: the LEADSTREAM_RATE_LIMIT_* defaults.
    rate_per_second: Mapped[float | None] = mapped_column(Float)
    rate_burst: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=text("now()"))
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)


class Source(Base):
    """A signed-webhook source: its events are signed with HMAC-SHA256 of its secret."""

    __tablename__ = "sources"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = mapped_column(UUID, ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    secret: Mapped[str] = mapped_column(Text)
    # After a rotation the old secret still verifies until previous_expires_at, so a sender
    # can switch without losing events.
    previous_secret: Mapped[str | None] = mapped_column(Text)
    previous_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # NULL: the LEADSTREAM_RATE_LIMIT_* defaults.
    rate_per_second: Mapped[float | None] = mapped_column(Float)
    rate_burst: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=text("now()"))
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)


# Table handles for Core statements (DeclarativeBase types __table__ as a FromClause).
tenants_t = cast(Table, Tenant.__table__)
companies_t = cast(Table, Company.__table__)
people_t = cast(Table, Person.__table__)
person_emails_t = cast(Table, PersonEmail.__table__)
person_phones_t = cast(Table, PersonPhone.__table__)
person_external_ids_t = cast(Table, PersonExternalId.__table__)
person_unverified_phones_t = cast(Table, PersonUnverifiedPhone.__table__)
visitors_t = cast(Table, Visitor.__table__)
events_t = cast(Table, Event.__table__)
idempotency_keys_t = cast(Table, IdempotencyKey.__table__)
dead_letters_t = cast(Table, DeadLetter.__table__)
sites_t = cast(Table, Site.__table__)
sources_t = cast(Table, Source.__table__)
