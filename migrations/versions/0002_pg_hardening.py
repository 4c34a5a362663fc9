"""PostgreSQL hardening: partial timeline indexes, foreign-key indexes, unverified phones,
indexes for the retention purge.

Revision ID: 0002_pg_hardening
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_pg_hardening"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KNOWN = sa.text("person_id IS NOT NULL")
_ANONYMOUS = sa.text("person_id IS NULL")


def upgrade() -> None:
    op.drop_index("ix_events_timeline", table_name="events")
    op.create_index(
        "ix_events_timeline", "events", ["person_id", "occurred_at", "id"], postgresql_where=_KNOWN
    )
    op.create_index(
        "ix_events_timeline_type",
        "events",
        ["person_id", "event_type", "occurred_at", "id"],
        postgresql_where=_KNOWN,
    )
    op.create_index(
        "ix_events_company_id",
        "events",
        ["company_id"],
        postgresql_where=sa.text("company_id IS NOT NULL"),
    )
    op.drop_index("ix_events_anonymous_visitor", table_name="events")
    op.create_index(
        "ix_events_anonymous_visitor",
        "events",
        ["tenant_id", "visitor_id", "occurred_at"],
        postgresql_where=_ANONYMOUS,
    )
    op.create_index(
        op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"], unique=False
    )
    op.create_index(op.f("ix_dead_letters_failed_at"), "dead_letters", ["failed_at"], unique=False)
    op.create_table(
        "person_unverified_phones",
        sa.Column("person_id", sa.UUID(), nullable=False),
        sa.Column("value", sa.String(length=320), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name=op.f("fk_person_unverified_phones_person_id_people"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_person_unverified_phones_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("person_id", "value", name=op.f("pk_person_unverified_phones")),
    )


def downgrade() -> None:
    op.drop_table("person_unverified_phones")
    op.drop_index(op.f("ix_dead_letters_failed_at"), table_name="dead_letters")
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name="idempotency_keys")
    op.drop_index("ix_events_anonymous_visitor", table_name="events")
    op.create_index(
        "ix_events_anonymous_visitor",
        "events",
        ["tenant_id", "visitor_id"],
        postgresql_where=_ANONYMOUS,
    )
    op.drop_index("ix_events_company_id", table_name="events")
    op.drop_index("ix_events_timeline_type", table_name="events")
    op.drop_index("ix_events_timeline", table_name="events")
    op.create_index("ix_events_timeline", "events", ["tenant_id", "person_id", "occurred_at"])
