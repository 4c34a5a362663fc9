"""signed-webhook sources; events' bot flag and the client's clock as sent

Revision ID: 0005_sources_event_flags
Revises: 0004_sites
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_sources_event_flags"
down_revision: str | None = "0004_sites"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous_secret", sa.Text(), nullable=True),
        sa.Column("previous_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rate_per_second", sa.Float(), nullable=True),
        sa.Column("rate_burst", sa.Integer(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sources_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sources")),
        sa.UniqueConstraint("tenant_id", "name", name=op.f("uq_sources_tenant_id")),
    )
    # Constant defaults and NULLs: PostgreSQL adds the columns without rewriting the table.
    op.add_column(
        "events", sa.Column("bot", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.add_column(
        "events", sa.Column("client_occurred_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("events", sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("events", sa.Column("clock_adjustment", sa.String(length=16), nullable=True))


def downgrade() -> None:
    for column in ("clock_adjustment", "sent_at", "client_occurred_at", "bot"):
        op.drop_column("events", column)
    op.drop_table("sources")
