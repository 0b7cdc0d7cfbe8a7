"""Emails are unique case-insensitively: a unique index on lower(email).

Fails on a database that already holds two emails differing only in case: find them with
``SELECT lower(email) FROM users GROUP BY 1 HAVING count(*) > 1`` and resolve them first.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("uq_users_email_lower", "users", [sa.text("lower(email)")], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_email_lower", table_name="users")
