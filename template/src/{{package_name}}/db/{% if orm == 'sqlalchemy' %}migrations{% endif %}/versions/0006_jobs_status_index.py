"""Jobs gain an index on ``status``: /metrics counts the queued and running jobs at every scrape,
and a worker finds the unfinished ones at its start, without reading every job ever run.

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_status", "jobs", ["status"])


def downgrade() -> None:
    op.drop_index("ix_jobs_status", table_name="jobs")
