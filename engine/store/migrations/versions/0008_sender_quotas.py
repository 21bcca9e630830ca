"""sender quotas: the shared send rate and the daily cap with its warm-up, per sender id

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sender_quotas",
        sa.Column("sender_id", sa.String(length=100), nullable=False),
        sa.Column("next_slot", sa.Double(), server_default=sa.text("0"), nullable=False),
        sa.Column("first_day", sa.Date(), nullable=True),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("used", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("sender_id", name=op.f("pk_sender_quotas")),
    )


def downgrade() -> None:
    op.drop_table("sender_quotas")
