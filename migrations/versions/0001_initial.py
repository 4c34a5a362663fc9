"""initial

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("problem", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("envelope", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_dead_letters")),
    )
    op.create_index(op.f("ix_dead_letters_reason"), "dead_letters", ["reason"], unique=False)
    op.create_index(op.f("ix_dead_letters_tenant_id"), "dead_letters", ["tenant_id"], unique=False)
    op.create_table(
        "tenants",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("default_region", sa.String(length=2), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    op.create_table(
        "companies",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("name_key", sa.String(length=255), nullable=False),
        sa.Column("website", sa.Text(), nullable=True),
        sa.Column("industry", sa.String(length=255), nullable=True),
        sa.Column("company_size", sa.String(length=255), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_companies_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_companies")),
        sa.UniqueConstraint("tenant_id", "name_key", name=op.f("uq_companies_tenant_id")),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_idempotency_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "people",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("first_name", sa.String(length=255), nullable=True),
        sa.Column("last_name", sa.String(length=255), nullable=True),
        sa.Column(
            "tags", postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'"), nullable=False
        ),
        sa.Column("source", sa.String(length=255), nullable=True),
        sa.Column("stage", sa.String(length=255), nullable=True),
        sa.Column("company_id", sa.UUID(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["company_id"],
            ["companies.id"],
            name=op.f("fk_people_company_id_companies"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_people_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_people")),
    )
    op.create_index(op.f("ix_people_company_id"), "people", ["company_id"], unique=False)
    op.create_index(
        "ix_people_tenant_id_created_at", "people", ["tenant_id", "created_at"], unique=False
    )
    op.create_table(
        "events",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("person_id", sa.UUID(), nullable=True),
        sa.Column("company_id", sa.UUID(), nullable=True),
        sa.Column("visitor_id", sa.String(length=128), nullable=True),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("source", sa.String(length=255), nullable=True),
        sa.Column("page_url", sa.Text(), nullable=True),
        sa.Column("page_title", sa.Text(), nullable=True),
        sa.Column("page_referrer", sa.Text(), nullable=True),
        sa.Column("page_duration", sa.Integer(), nullable=True),
        sa.Column("property", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("property_search", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("was_person_created", sa.Boolean(), nullable=False),
        sa.Column("was_company_created", sa.Boolean(), nullable=True),
        sa.Column("match_conflict", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.ForeignKeyConstraint(
            ["company_id"],
            ["companies.id"],
            name=op.f("fk_events_company_id_companies"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name=op.f("fk_events_person_id_people"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_events_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index(
        "ix_events_anonymous_visitor",
        "events",
        ["tenant_id", "visitor_id"],
        unique=False,
        postgresql_where=sa.text("person_id IS NULL"),
    )
    op.create_index(
        "ix_events_timeline", "events", ["tenant_id", "person_id", "occurred_at"], unique=False
    )
    for table in ("person_emails", "person_phones"):
        _contact_table(table)
    op.create_table(
        "visitors",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("visitor_id", sa.String(length=128), nullable=False),
        sa.Column("person_id", sa.UUID(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name=op.f("fk_visitors_person_id_people"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "visitor_id", name=op.f("pk_visitors")),
    )
    op.create_index(op.f("ix_visitors_person_id"), "visitors", ["person_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_visitors_person_id"), table_name="visitors")
    op.drop_table("visitors")
    op.drop_index(op.f("ix_person_phones_person_id"), table_name="person_phones")
    op.drop_table("person_phones")
    op.drop_index(op.f("ix_person_emails_person_id"), table_name="person_emails")
    op.drop_table("person_emails")
    op.drop_index("ix_events_timeline", table_name="events")
    op.drop_index(
        "ix_events_anonymous_visitor",
        table_name="events",
        postgresql_where=sa.text("person_id IS NULL"),
    )
    op.drop_table("events")
    op.drop_index("ix_people_tenant_id_created_at", table_name="people")
    op.drop_index(op.f("ix_people_company_id"), table_name="people")
    op.drop_table("people")
    op.drop_table("idempotency_keys")
    op.drop_table("companies")
    op.drop_table("tenants")
    op.drop_index(op.f("ix_dead_letters_tenant_id"), table_name="dead_letters")
    op.drop_index(op.f("ix_dead_letters_reason"), table_name="dead_letters")
    op.drop_table("dead_letters")


def _contact_table(name: str) -> None:
    """person_emails and person_phones: the same shape, one contact point per row."""
    op.create_table(
        name,
        sa.Column("person_id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("value", sa.String(length=320), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=True),
        sa.Column("is_primary", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name=op.f(f"fk_{name}_person_id_people"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "value", name=op.f(f"pk_{name}")),
    )
    op.create_index(op.f(f"ix_{name}_person_id"), name, ["person_id"], unique=False)
