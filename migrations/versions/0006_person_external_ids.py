"""person_external_ids: an app's own id for a person, one per person, unique per tenant

Revision ID: 0006_person_external_ids
Revises: 0005_sources_event_flags
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_person_external_ids"
down_revision: str | None = "0005_sources_event_flags"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "person_external_ids",
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("person_id", sa.UUID(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["people.id"],
            name=op.f("fk_person_external_ids_person_id_people"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "value", name=op.f("pk_person_external_ids")),
    )
    op.create_index(
        op.f("ix_person_external_ids_person_id"),
        "person_external_ids",
        ["person_id"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_person_external_ids_person_id"), table_name="person_external_ids")
    op.drop_table("person_external_ids")
