"""tenant status: disabled tenants and per-tenant token revocation

Revision ID: 0003_tenant_status
Revises: 0002_pg_hardening
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_tenant_status"
down_revision: str | None = "0002_pg_hardening"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Constant defaults: PostgreSQL adds both columns without rewriting the table.
    op.add_column(
        "tenants", sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False)
    )
    op.add_column(
        "tenants",
        sa.Column("token_version", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )


def downgrade() -> None:
    op.drop_column("tenants", "token_version")
    op.drop_column("tenants", "active")
