"""After every update: the Alembic history has one head, so `db upgrade` runs.

A team adds its own revisions on the template's latest one (README, "Migrations"); when an update
brings a template revision that follows the same one, the history forks into two heads and
Alembic refuses to upgrade ("multiple heads"). This writes a merge revision on those heads (what
`alembic merge heads` writes, with no upgrade step of its own), says so, and does nothing when
there is one head. Only the files are read: nothing of the project is imported.

Usage: alembic_heads.py ANSWERS_FILE; services with Prisma have no Alembic history and are left
alone.
"""

import ast
import sys
import uuid
from pathlib import Path

import yaml  # installed with copier, which runs this script

MERGE = '''"""Merge of the migration heads {listed}: written by `copier update`
(the template's hooks/alembic_heads.py) when the template's revisions and the team's followed
the same one. Nothing to run: both branches upgrade before it.

Revision ID: {revision}
Revises: {listed}
"""

revision = "{revision}"
down_revision: tuple[str, ...] = ({down})
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
'''


def revisions(versions: Path) -> dict[str, tuple[str, ...]]:
    """Every revision in ``versions`` and the revisions it follows."""
    graph: dict[str, tuple[str, ...]] = {}
    for path in sorted(versions.glob("*.py")):
        values = {}
        for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            else:
                continue
            if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                values[target.id] = ast.literal_eval(value)
        if isinstance(values.get("revision"), str):
            down = values.get("down_revision")
            graph[values["revision"]] = (down,) if isinstance(down, str) else tuple(down or ())
    return graph


def heads(graph: dict[str, tuple[str, ...]]) -> list[str]:
    followed = {parent for parents in graph.values() for parent in parents}
    return sorted(revision for revision in graph if revision not in followed)


def main(answers_file: str) -> int:
    answers = yaml.safe_load(Path(answers_file).read_text(encoding="utf-8")) or {}
    versions = Path("src", str(answers.get("package_name", "")), "db", "migrations", "versions")
    if answers.get("orm") != "sqlalchemy" or not versions.is_dir():
        return 0
    try:
        found = heads(revisions(versions))
    except (SyntaxError, ValueError) as exc:  # conflict markers in a revision: resolve first
        print(
            f"alembic: could not read the migrations ({exc}); once the conflicts are resolved,"
            " run `uv run alembic heads` and, with two, `uv run alembic merge heads`",
            file=sys.stderr,
        )
        return 0
    if len(found) < 2:
        return 0
    revision = uuid.uuid4().hex[:12]
    listed = ", ".join(found)
    path = versions / f"{revision}_merge_heads.py"
    down = ", ".join(f'"{head}"' for head in found)
    path.write_text(MERGE.format(revision=revision, listed=listed, down=down), encoding="utf-8")
    print(
        f"alembic: the template's migrations and yours had {len(found)} heads ({listed}); wrote"
        f" {path.as_posix()} merging them, so `db upgrade` runs: commit it with the update",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
