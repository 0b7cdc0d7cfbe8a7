"""`copier update`, the way a team uses it: from an older template version over a project with
committed edits, with no template change, and to switch an answer and back.

The template is released into a temporary git repository: 0.1.0 is this working tree (uncommitted
edits included) and 0.2.0 a realistic next version built by `_release_next_version`, so the tests
never depend on this repository's own tags. Copier runs from this environment's Python, with
--trust, exactly as docs/updating.md tells users to run it.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import hmac
import re
import runpy
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from conftest import TOOL_DIRS, project_env, run_ok
from template_config import REPO_ROOT, Combination

V1, V2 = "0.1.0", "0.2.0"
# author_name is renamed to maintainer_name in 0.2.0: its answer must survive the rename.
ANSWERS = {"project_name": "Update Demo", "author_name": "Jane Doe"}
SRC = "src/update_demo"
TEMPLATE_VERSIONS = (
    REPO_ROOT
    / "template"
    / "src"
    / "{{package_name}}"
    / "db"
    / "{% if orm == 'sqlalchemy' %}migrations{% endif %}"
    / "versions"
)
MEMORY = Combination({"orm": "sqlalchemy", "database": "sqlite", "cache_backend": "memory"})
PRISMA = Combination({**MEMORY.answers, "orm": "prisma"})
REDIS = Combination({**MEMORY.answers, "cache_backend": "redis"})

COPIER = [sys.executable, "-m", "copier"]
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Template Tests",
    "GIT_AUTHOR_EMAIL": "template-tests@example.com",
    "GIT_COMMITTER_NAME": "Template Tests",
    "GIT_COMMITTER_EMAIL": "template-tests@example.com",
}
# Copier's inline conflicts; the "|||||||" part (the old template's lines) is there only with
# git's diff3 conflict style.
OURS, END = "<<<<<<< before updating", ">>>>>>> after updating"
CONFLICT = re.compile(
    rf"^{OURS}\n(?P<ours>.*?)(?:^\|{{7}} [^\n]*\n.*?)?^=======\n(?P<theirs>.*?)^{END}\n",
    re.MULTILINE | re.DOTALL,
)

# --------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    return project_env(None, **GIT_IDENTITY)


def git(cwd: Path, *args: str) -> str:
    return run_ok(["git", "-c", "commit.gpgsign=false", *args], cwd, _env())


def commit(project: Path, message: str) -> None:
    git(project, "add", "--all")
    git(project, "commit", "--quiet", "--allow-empty", "-m", message)


def copier_copy(template: Path, project: Path, ref: str, **data: str) -> None:
    answers = [arg for item in {**ANSWERS, **data}.items() for arg in ("-d", "=".join(item))]
    run_ok(
        [*COPIER, "copy", "--trust", "--defaults", f"--vcs-ref={ref}", *answers]
        + [str(template), str(project)],
        project.parent,
        _env(),
    )


def copier_update(project: Path, **data: str) -> str:
    """The command docs/updating.md documents: the latest tag, every recorded answer kept."""
    answers = [arg for item in data.items() for arg in ("-d", "=".join(item))]
    return run_ok([*COPIER, "update", "--trust", "--defaults", *answers], project, _env())


def recorded_answers(project: Path) -> dict[str, object]:
    return yaml.safe_load((project / ".copier-answers.yml").read_text(encoding="utf-8"))


def dependencies(project: Path) -> set[str]:
    data = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    return {Requirement(spec).name for spec in data["project"]["dependencies"]}


def locked_packages(project: Path) -> set[str]:
    data = tomllib.loads((project / "uv.lock").read_text(encoding="utf-8"))
    return {package["name"] for package in data["package"]}


def project_files(project: Path) -> list[Path]:
    return [
        path
        for path in project.rglob("*")
        if path.is_file() and not TOOL_DIRS.intersection(path.relative_to(project).parts)
    ]


def files_with_markers(project: Path) -> set[str]:
    found = set()
    for path in project_files(project):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if OURS in text or END in text:
            found.add(path.relative_to(project).as_posix())
    return found


def conflicts(path: Path) -> list[tuple[str, str]]:
    """(before updating, after updating) of every conflict in the file."""
    return [(match["ours"], match["theirs"]) for match in CONFLICT.finditer(path.read_text())]


def resolve(path: Path, keep: str) -> None:
    path.write_text(CONFLICT.sub(lambda match: match[keep], path.read_text()))


def check_updated_project(project: Path, combo: Combination, *tests: str) -> None:
    """What a team's CI runs after the update: lint and types over every file, then the tests of
    what the update touched (each test module imports the whole app, so a merge that breaks an
    import fails here too). The complete suite of every combination runs in test_generated.py;
    running it again after each update cost about a sixth of CI's CPU."""
    env = project_env(combo)
    # --locked: the lock copier's tasks left must already match pyproject.toml.
    run_ok(["uv", "sync", "--locked"], project, env)
    run_ok(["uv", "run", "ruff", "check", "."], project, env)
    run_ok(["uv", "run", "ruff", "format", "--check", "."], project, env)
    run_ok(["uv", "run", "mypy"], project, env)
    run_ok(["uv", "run", "pytest", "-q", *tests], project, env)


def replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    if old not in text:
        pytest.fail(
            f"{path.name} no longer contains {old!r}: adapt the edit in tests/test_update.py to "
            "the template",
            pytrace=False,
        )
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


# --------------------------------------------------------------------------- the two versions

# 0.2.0, as a template maintainer would write it: a new setting, a changed line of the timing
# middleware, streaming.py renamed to responses.py, and the question author_name renamed to
# maintainer_name.
# The last two need the _migrations entries below; a three-way merge cannot express them.
V2_NEW_SETTING = '    request_id_header: str = "X-Request-ID"\n'
V2_TIMING_LINE = "        self.slow_request_seconds = max(slow_request_ms, 1.0) / 1000\n"
V1_TIMING_LINE = "        self.slow_request_seconds = slow_request_ms / 1000\n"
# Must never reach a project: existing Alembic revisions are in _skip_if_exists.
V2_REVISION_LINE = "\n\n# Edited in 0.2.0.\n"  # formatted: two blank lines after a def
# 0.2.0 adds a revision on the last one of 0.1.0, and the team has one there too: two heads.
V2_REVISION, TEAM_REVISION = "0900", "a1b2c3d4e5f6"  # 0900: after any the template ships
REVISION = "db/migrations/versions/0001_initial.py"
TEMPLATE_REVISION = "db/{% if orm == 'sqlalchemy' %}migrations{% endif %}/versions/0001_initial.py"
V2_MIGRATIONS = """\
_migrations:
  - version: "0.2.0"
    when: "{{ _stage == 'before' }}"
    command:
      - "{{ _copier_python }}"
      - "{{ _copier_conf.src_path }}/hooks/rename_answer.py"
      - "{{ _copier_conf.answers_file }}"
      - author_name
      - maintainer_name
  - version: "0.2.0"
    when: "{{ _stage == 'before' }}"
    command:
      - "{{ _copier_python }}"
      - "{{ _copier_conf.src_path }}/hooks/move_path.py"
      - "{{ _copier_conf.answers_file }}"
      - src/{package_name}/streaming.py
      - src/{package_name}/responses.py
"""


def _release_next_version(repo: Path) -> None:
    package = repo / "template" / "src" / "{{package_name}}"
    replace_once(
        package / "settings.py.jinja",
        '    model_config = _config("APP_")\n\n',
        f'    model_config = _config("APP_")\n\n{V2_NEW_SETTING}',
    )
    replace_once(package / "observability" / "timing.py", V1_TIMING_LINE, V2_TIMING_LINE)
    revision = package / TEMPLATE_REVISION
    revision.write_text(revision.read_text() + V2_REVISION_LINE)
    last = max(path.name[:4] for path in revision.parent.glob("*.py"))
    revision.with_name(f"{V2_REVISION}_next.py").write_text(
        noop_revision(V2_REVISION, last, f"A revision of {V2}, with nothing to run.")
    )
    git(repo, "mv", str(package / "streaming.py"), str(package / "responses.py"))
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        path.write_text(text.replace("from ..streaming import", "from ..responses import"))
    # The renamed import sorts elsewhere among its neighbours, as the release's author would fix.
    isort = [sys.executable, "-m", "ruff", "check", "--select", "I", "--fix", "--quiet"]
    run_ok([*isort, str(package)], repo, _env())
    config = repo / "copier.yml"
    replace_once(config, "\nauthor_name:\n", "\nmaintainer_name:\n")
    # Its validator too.
    config.write_text(config.read_text().replace("author_name", "maintainer_name"))
    replace_once(
        repo / "template" / "pyproject.toml.jinja",
        "toml_str(author_name)",
        "toml_str(maintainer_name)",
    )
    replace_once(repo / "copier.yml", "\n_migrations:\n", "\n" + V2_MIGRATIONS)
    commit(repo, f"release {V2}")
    git(repo, "tag", V2)


def _copy_working_tree(repo: Path) -> None:
    """This repository's working tree (uncommitted edits included) into ``repo``."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():  # tracked files deleted in the working tree are not part of it
            target = repo / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
            target.chmod(source.stat().st_mode)


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository holding the template, tagged 0.1.0 (this working tree) and 0.2.0."""
    repo = tmp_path_factory.mktemp("template") / "copier-fastapi-perf"
    _copy_working_tree(repo)
    git(repo, "init", "--quiet")
    commit(repo, f"release {V1}")
    git(repo, "tag", V1)
    _release_next_version(repo)
    return repo


# --------------------------------------------------------------------------- hooks


def _hook(name: str, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "hooks" / name), *args],
        cwd=cwd,
        env={**_env(), **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_git_init_hook_is_idempotent_and_respects_an_enclosing_repository(tmp_path: Path) -> None:
    service = tmp_path / "service"
    service.mkdir()
    for _ in range(2):
        assert _hook("git_init.py", service).returncode == 0
    assert (service / ".git").is_dir()

    # A service generated inside a repository (a monorepo) stays part of it.
    nested = service / "services" / "demo"
    nested.mkdir(parents=True)
    assert _hook("git_init.py", nested).returncode == 0
    assert not (nested / ".git").exists()


def test_uv_lock_hook_without_uv_says_what_to_do(tmp_path: Path) -> None:
    result = _hook("uv_lock.py", tmp_path, PATH=str(tmp_path))

    assert result.returncode == 0
    assert "uv not found" in result.stderr
    assert "uv lock" in result.stderr


def test_uv_lock_hook_fails_when_the_lock_fails(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndescription = "a "b" c"\n')

    result = _hook("uv_lock.py", tmp_path)

    assert result.returncode == 1, result.stderr
    assert "`uv lock` failed" in result.stderr


def test_uv_lock_hook_leaves_conflict_markers_to_the_user(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n<<<<<<< before updating\n=======\n>>>>>>> after updating\n'
    )

    result = _hook("uv_lock.py", tmp_path)

    assert result.returncode == 0, result.stderr
    assert "conflict markers" in result.stderr
    assert not (tmp_path / "uv.lock").exists()


PRISMA_GENERATE = "aprisma generate --schema prisma/schema.prisma"


def _tool_project(tmp_path: Path, tool: str, script: str) -> dict[str, str]:
    """A project with no dependencies (`uv run` makes its .venv offline) and an executable named
    `tool` on PATH: the real aprisma is run by every Prisma combination's render (slow tier)."""
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "demo"\nversion = "0"\nrequires-python = ">=3.11"\n'
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / tool).write_text(f"#!{sys.executable}\n{script}")
    (bin_dir / tool).chmod(0o755)
    return {"PATH": f"{bin_dir}:{_env()['PATH']}"}


def test_prisma_generate_hook_without_uv_says_what_to_do(tmp_path: Path) -> None:
    result = _hook("prisma_generate.py", tmp_path, PATH=str(tmp_path))

    assert result.returncode == 0
    assert result.stderr == f"uv not found: install uv, then run `uv run {PRISMA_GENERATE}`" + (
        " in the project\n"
    )


def test_prisma_generate_hook_runs_in_the_project_environment(tmp_path: Path) -> None:
    """Copier runs hooks from its own environment (uvx): the generator must run in the project's,
    where pyproject.toml pins aprisma, and twice is the same as once."""
    record = tmp_path / "calls.txt"
    script = (
        "import os, sys\n"
        f"with open({str(record)!r}, 'a') as calls:\n"
        "    calls.write(os.environ['VIRTUAL_ENV'] + ' ' + ' '.join(sys.argv[1:]) + '\\n')\n"
    )
    env = _tool_project(tmp_path, "aprisma", script)

    for _ in range(2):
        result = _hook(
            "prisma_generate.py", tmp_path, **env, VIRTUAL_ENV=str(tmp_path / "copier-env")
        )
        assert (result.returncode, result.stderr) == (0, "")

    call = f"{tmp_path / '.venv'} generate --schema prisma/schema.prisma\n"
    assert record.read_text() == call * 2


def test_prisma_generate_hook_fails_the_copy_with_the_cause(tmp_path: Path) -> None:
    failure = "import sys\nsys.exit('prisma/schema.prisma: error: Missing datasource')\n"
    env = _tool_project(tmp_path, "aprisma", failure)

    result = _hook("prisma_generate.py", tmp_path, **env)

    assert result.returncode == 1
    assert "prisma/schema.prisma: error: Missing datasource" in result.stderr
    assert result.stderr.endswith(
        f"could not generate the Prisma client: fix the cause, then run `uv run {PRISMA_GENERATE}`"
        " in the project\n"
    )


def test_an_update_ends_with_the_files_that_hold_conflict_markers(tmp_path: Path) -> None:
    """Copier exits 0 with conflicts left in files: the last step of copier.yml's _migrations
    lists them. Run by copier over a tiny template with that step and its hook (nothing to
    install): the conflicted file is listed, an ignored one with markers (.venv) is not."""
    settings = (REPO_ROOT / "copier.yml").read_text(encoding="utf-8").split("\n---\n")[0]
    last = yaml.safe_load(settings)["_migrations"][-1]
    assert last["command"][-1].endswith("/hooks/conflicts.py")
    template, project = tmp_path / "template", tmp_path / "project"
    (template / "hooks").mkdir(parents=True)
    (template / "copier.yml").write_text(
        yaml.safe_dump({"_subdirectory": "files", "_migrations": [last]}), encoding="utf-8"
    )
    (template / "hooks" / "conflicts.py").write_bytes(
        (REPO_ROOT / "hooks/conflicts.py").read_bytes()
    )
    (template / "files").mkdir()
    (template / "files" / ".gitignore").write_text(".venv/\n")
    answers = template / "files" / "{{ _copier_conf.answers_file }}.jinja"
    answers.write_text("{{ _copier_answers | to_nice_yaml }}")
    git(template, "init", "--quiet")
    for version, line in ((V1, "first\n"), (V2, "the template's\n")):
        (template / "files" / "notes.txt").write_text(line)
        commit(template, version)
        git(template, "tag", version)
    run_ok(
        [*COPIER, "copy", "--trust", f"--vcs-ref={V1}", str(template), str(project)],
        tmp_path,
        _env(),
    )
    git(project, "init", "--quiet")
    (project / "notes.txt").write_text("the team's\n")
    (project / "plain.txt").write_text("no markers, <<<<<<< mid-line\n")
    commit(project, "project")
    (project / ".venv").mkdir()
    (project / ".venv" / "vendored.py").write_text("<<<<<<< a\n=======\n>>>>>>> b\n")

    updated = subprocess.run(
        [*COPIER, "update", "--trust", "--defaults"],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )

    assert updated.returncode == 0, updated.stderr
    assert "<<<<<<< before updating" in (project / "notes.txt").read_text()
    assert updated.stderr.rstrip().endswith(
        "copier update: 1 file(s) hold conflict markers; edit each to what you want, then"
        " `git add -A` and commit (docs/updating.md, step 3):\n    notes.txt"
    )
    (project / "notes.txt").write_text("resolved\n")
    assert _hook("conflicts.py", project).stderr == "copier update: no conflicts\n"


def noop_revision(revision: str, down_revision: str, what: str) -> str:
    """An Alembic revision file with nothing to run, as the generated project's lint wants it."""
    return f'''"""{what}

Revision ID: {revision}
Revises: {down_revision}
"""

revision = "{revision}"
down_revision: str | None = "{down_revision}"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
'''


def test_alembic_heads_hook_merges_the_template_and_the_team_heads(tmp_path: Path) -> None:
    """The template's real revisions, and a team's revision on 0001 beside the template's later
    ones (a service copied before 0002, updated after): two heads, which Alembic refuses to upgrade.
    The hook writes one merge revision on both, once."""
    versions = tmp_path / "src" / "demo" / "db" / "migrations" / "versions"
    versions.mkdir(parents=True)
    for revision in TEMPLATE_VERSIONS.glob("*.py"):
        (versions / revision.name).write_bytes(revision.read_bytes())
    team = noop_revision(TEAM_REVISION, "0001", "The team's own, on the template's 0001.")
    (versions / f"{TEAM_REVISION}_team.py").write_text(team)
    (tmp_path / ".copier-answers.yml").write_text("orm: sqlalchemy\npackage_name: demo\n")
    hook = runpy.run_path(str(REPO_ROOT / "hooks" / "alembic_heads.py"))
    template_head = max(path.name[:4] for path in TEMPLATE_VERSIONS.glob("*.py"))
    assert hook["heads"](hook["revisions"](versions)) == [template_head, TEAM_REVISION]

    merged = _hook("alembic_heads.py", tmp_path, ".copier-answers.yml")
    again = _hook("alembic_heads.py", tmp_path, ".copier-answers.yml")

    assert merged.returncode == again.returncode == 0, merged.stderr
    [merge] = versions.glob("*_merge_heads.py")
    revision = runpy.run_path(str(merge))
    assert revision["down_revision"] == (template_head, TEAM_REVISION)
    assert hook["heads"](hook["revisions"](versions)) == [revision["revision"]]
    assert (
        f"had 2 heads ({template_head}, {TEAM_REVISION}); wrote src/demo/db/migrations/versions/"
        in merged.stderr
    )
    assert again.stderr == ""
    assert len(list(versions.glob("*_merge_heads.py"))) == 1


TEAM_MIGRATION = "20261201093000_widgets"  # named as the generated README's Prisma notes say
TEAM_MIGRATION_SQL = """CREATE TABLE "widgets" (
    "id" INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    "project_id" INTEGER NOT NULL REFERENCES "projects" ("id") ON DELETE CASCADE,
    "name" TEXT NOT NULL
);
CREATE INDEX "ix_widgets_project_id" ON "widgets"("project_id");
"""


def _prisma_schema(database: Path) -> set[tuple[str, str, str]]:
    with contextlib.closing(sqlite3.connect(database)) as connection:
        rows = connection.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL")
        return set(rows)


@pytest.mark.parametrize("combo", [PRISMA], ids=[PRISMA.id])  # shares the combination's render
def test_prisma_migrations_upgrade_around_a_team_migration(
    combo: Combination, synced, tmp_path: Path
) -> None:
    """Issue 29 item 17, Prisma's side, over the template's real migrations: a service copied when
    the template shipped only 0001 ran it and then its own migration; an update adds the
    template's later ones, which sort before the team's. Prisma Migrate applies each migration it
    has not run, by name, whatever their order (Alembic needs a merge revision instead), so
    `prisma migrate deploy` upgrades with no step of ours, and the database ends where a fresh
    one does."""
    rendered = synced(combo).project_dir
    project = tmp_path / "service"
    (project / "prisma").mkdir(parents=True)
    for name in ("prisma.config.ts", "package.json", "prisma/schema.prisma"):
        shutil.copy(rendered / name, project / name)
    (project / "node_modules").symlink_to(rendered / "node_modules")
    shipped = sorted((rendered / "prisma" / "migrations").iterdir())
    migrations = project / "prisma" / "migrations"
    migrations.mkdir()
    shutil.copy(rendered / "prisma/migrations/migration_lock.toml", migrations)
    first, *later = [path for path in shipped if path.is_dir()]
    assert first.name == "0001_initial"
    assert later, "the template ships migrations after 0001"
    shutil.copytree(first, migrations / first.name)
    (migrations / TEAM_MIGRATION).mkdir()
    (migrations / TEAM_MIGRATION / "migration.sql").write_text(TEAM_MIGRATION_SQL)

    def prisma(database: Path, *args: str) -> str:
        env = {**project_env(combo), "DATABASE_URL": f"file:{database}"}
        return run_ok(["node", "node_modules/.bin/prisma", *args], project, env)

    service_db, fresh_db = tmp_path / "service.db", tmp_path / "fresh.db"
    prisma(service_db, "migrate", "deploy")
    for migration in later:  # what `copier update` brings
        shutil.copytree(migration, migrations / migration.name)

    upgraded = prisma(service_db, "migrate", "deploy")

    assert all(migration.name in upgraded for migration in later), upgraded
    assert TEAM_MIGRATION not in upgraded  # run once, before the update
    assert "Database schema is up to date!" in prisma(service_db, "migrate", "status")
    prisma(fresh_db, "migrate", "deploy")  # a new environment runs them in file order
    assert _prisma_schema(service_db) == _prisma_schema(fresh_db)
    assert ("table", "widgets") in {row[:2] for row in _prisma_schema(service_db)}


# The last commit whose services stored scrypt hashes (api/users.py's hash_password); the next
# one brought sign-in and Argon2id.
LAST_SCRYPT_COMMIT = "85bbf34f43ce744f2a19e4dd6e4bd5aae87ce729"


def _definition(source: str, name: str, namespace: dict[str, Any]) -> Any:
    """The function or class ``name`` of a module's source, run alone in ``namespace``."""
    [node] = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == name
    ]
    exec(compile(ast.Module([node], []), name, "exec"), namespace)  # noqa: S102 - our own code
    return namespace[name]


def test_passwords_hashed_before_sign_in_still_verify_and_are_rehashed() -> None:
    """A service updated from the last scrypt version keeps its users: what that commit's own
    hash_password wrote (read from this repository's history) verifies with the template's
    LegacyScryptHasher, and is marked for rehashing (tests/test_auth.py in every combination
    signs such a user in through the API and checks the Argon2id hash that replaces it)."""
    old = git(
        REPO_ROOT, "show", f"{LAST_SCRYPT_COMMIT}:template/src/{{{{package_name}}}}/api/users.py"
    )
    hash_password = _definition(old, "hash_password", {"hashlib": hashlib, "secrets": secrets})
    security = (REPO_ROOT / "template" / "src" / "{{package_name}}" / "security.py").read_text()
    hasher_class = _definition(security, "LegacyScryptHasher", {"hashlib": hashlib, "hmac": hmac})
    hasher = hasher_class()

    stored = hash_password("correct horse battery staple")

    assert hasher_class.identify(stored)
    assert hasher.verify("correct horse battery staple", stored)
    assert not hasher.verify("correct horse battery stapler", stored)
    assert hasher.check_needs_rehash(stored)


def test_migration_hooks_are_idempotent(tmp_path: Path) -> None:
    git(tmp_path, "init", "--quiet")
    answers = tmp_path / ".copier-answers.yml"
    answers.write_text("_commit: 0.1.0\nauthor_name: Jane Doe\npackage_name: demo\n")
    (tmp_path / "src" / "demo").mkdir(parents=True)
    (tmp_path / "src" / "demo" / "streaming.py").write_text("# edited by the team\n")
    commit(tmp_path, "project")
    rename = (answers.name, "author_name", "maintainer_name")
    move = (answers.name, "src/{package_name}/streaming.py", "src/{package_name}/responses.py")

    for _ in range(2):
        assert _hook("rename_answer.py", tmp_path, *rename).returncode == 0
        assert _hook("move_path.py", tmp_path, *move).returncode == 0

    assert answers.read_text() == "_commit: 0.1.0\nmaintainer_name: Jane Doe\npackage_name: demo\n"
    assert (tmp_path / "src/demo/responses.py").read_text() == "# edited by the team\n"
    assert not (tmp_path / "src/demo/streaming.py").exists()
    # The move is staged, as a rename: copier merges what is in the index.
    assert (
        "R  src/demo/streaming.py -> src/demo/responses.py"
        in git(tmp_path, "status", "--porcelain").splitlines()
    )


def test_rename_package_hook(tmp_path: Path) -> None:
    git(tmp_path, "init", "--quiet")
    answers = tmp_path / ".copier-answers.yml"
    answers.write_text("_commit: 0.1.0\npackage_name: demo\n")
    (tmp_path / "src" / "demo").mkdir(parents=True)
    (tmp_path / "src" / "demo" / "ours.py").write_text("# the team's module\n")
    (tmp_path / "src" / "demo_bench").mkdir()
    (tmp_path / "src" / "demo_bench" / "command.py").write_text("# the team's bench\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_ours.py").write_text("from demo.ours import x\n")
    commit(tmp_path, "project")

    refused = _hook("rename_package.py", tmp_path, "before", answers.name, "fastapi")
    assert refused.returncode == 1
    assert "the import name of a dependency" in refused.stderr
    assert (tmp_path / "src/demo/ours.py").is_file()

    moved = _hook("rename_package.py", tmp_path, "before", answers.name, "renamed")
    again = _hook("rename_package.py", tmp_path, "before", answers.name, "renamed")

    assert (moved.returncode, again.returncode) == (0, 0), moved.stderr + again.stderr
    assert (tmp_path / "src/renamed/ours.py").read_text() == "# the team's module\n"
    assert not (tmp_path / "src/demo").exists()
    assert (tmp_path / "src/renamed_bench/command.py").read_text() == "# the team's bench\n"
    assert not (tmp_path / "src/demo_bench").exists()
    # Staged as a rename (copier merges what is in the index); the team's test still imports
    # the old name and is listed.
    assert (
        "R  src/demo/ours.py -> src/renamed/ours.py"
        in git(tmp_path, "status", "--porcelain").splitlines()
    )
    assert "tests/test_ours.py" in moved.stderr
    assert again.stderr == ""
    answers.write_text("_commit: 0.2.0\npackage_name: renamed\n")
    assert _hook("rename_package.py", tmp_path, "after", answers.name).returncode == 0


def test_rename_package_hook_refuses_a_rename_it_did_not_move(tmp_path: Path) -> None:
    """A new package_name typed at the prompt: copier deleted src/OLD; say how to redo it."""
    git(tmp_path, "init", "--quiet")
    answers = tmp_path / ".copier-answers.yml"
    answers.write_text("_commit: 0.1.0\npackage_name: demo\n")
    commit(tmp_path, "project")
    answers.write_text("_commit: 0.2.0\npackage_name: renamed\n")

    result = _hook("rename_package.py", tmp_path, "after", answers.name)

    assert result.returncode == 1
    assert "copier update --trust --defaults -d package_name=renamed" in result.stderr
    assert "git reset --hard" in result.stderr


# --------------------------------------------------------------------------- updates

WIDGETS = '''\
"""Widgets: an endpoint the team added."""

from fastapi import APIRouter

router = APIRouter(prefix="/widgets", tags=["widgets"])


@router.get("")
async def list_widgets() -> list[str]:
    return ["sprocket"]
'''
WIDGETS_REGISTRATION = (
    "\nfrom . import widgets  # noqa: E402\n\napi_router.include_router(widgets.router)\n"
)
WIDGETS_TEST = """\
import httpx


async def test_widgets(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/widgets")

    assert response.json() == ["sprocket"]
"""
USER_SETTING = (
    "ttl_seconds: int = Field(default=60, ge=1)",
    "ttl_seconds: int = Field(default=300, ge=1)",
)
USER_TIMING_LINE = "        self.slow_request_seconds = slow_request_ms / 1000 / 2  # log sooner\n"
USER_STREAMING_LINE = "# Kept by the team: every export goes through ClosingStreamingResponse.\n"


def _add_widgets_endpoint(project: Path) -> None:
    (project / SRC / "api" / "widgets.py").write_text(WIDGETS)
    init = project / SRC / "api" / "__init__.py"
    init.write_text(init.read_text() + WIDGETS_REGISTRATION)
    (project / "tests" / "test_widgets.py").write_text(WIDGETS_TEST)


@pytest.mark.slow  # checks the updated service: lint, types, its tests
def test_update_to_the_next_version_keeps_every_user_edit(
    template_repo: Path, tmp_path: Path
) -> None:
    project = tmp_path / "update-demo"
    copier_copy(template_repo, project, V1)

    # The copy tasks made a git repository and pinned the dependencies.
    assert (project / ".git").is_dir()
    assert (project / "uv.lock").is_file()
    answers = recorded_answers(project)
    assert (answers["_commit"], answers["_src_path"]) == (V1, str(template_repo))
    commit(project, "Generate the service")

    _add_widgets_endpoint(project)
    env_file = project / ".env"  # gitignored: never committed, never touched
    env_file.write_text((project / ".env.example").read_text() + "CACHE_TTL_SECONDS=5\n")
    env_before = env_file.read_text()
    revision_before = (project / SRC / REVISION).read_text()
    replace_once(project / SRC / "settings.py", *USER_SETTING)
    replace_once(project / SRC / "observability" / "timing.py", V1_TIMING_LINE, USER_TIMING_LINE)
    streaming = project / SRC / "streaming.py"
    streaming.write_text(streaming.read_text() + "\n\n" + USER_STREAMING_LINE)
    versions = (project / SRC / REVISION).parent
    head = max(path.name[:4] for path in versions.glob("*.py"))
    team = noop_revision(TEAM_REVISION, head, "The team's own, on the template's last.")
    (versions / f"{TEAM_REVISION}_team.py").write_text(team)
    commit(project, "Our changes")

    output = copier_update(project)

    assert f"Updating to template version {V2}" in output
    # The template's new revision and the team's follow the same one: merged, so that the
    # project's tests below can migrate.
    assert f"had 2 heads ({V2_REVISION}, {TEAM_REVISION}); wrote" in output
    assert len(list(versions.glob("*_merge_heads.py"))) == 1
    answers = recorded_answers(project)
    assert answers["_commit"] == V2
    # The renamed question kept its answer (without the migration: the new default).
    assert answers["maintainer_name"] == "Jane Doe"
    assert "author_name" not in answers
    assert 'name = "Jane Doe"' in (project / "pyproject.toml").read_text()
    # The template's change arrived, and the user's change to the same file is still there.
    settings = (project / SRC / "settings.py").read_text()
    assert V2_NEW_SETTING in settings
    assert USER_SETTING[1] in settings
    # The moved file took the user's edit with it (see the conflicts below), and its importer
    # follows the move.
    assert not streaming.exists()
    assert "from ..responses import" in (project / SRC / "api" / "items.py").read_text()
    # The new endpoint, its registration and its test are untouched.
    assert (project / SRC / "api" / "widgets.py").read_text() == WIDGETS
    assert (project / SRC / "api" / "__init__.py").read_text().endswith(WIDGETS_REGISTRATION)
    assert (project / "tests" / "test_widgets.py").read_text() == WIDGETS_TEST
    # What the user owns: their .env, and the Alembic revision the template changed.
    assert env_file.read_text() == env_before
    assert (project / SRC / REVISION).read_text() == revision_before
    # What a merge cannot settle is an inline conflict, marked unmerged for git; no .rej files.
    # The line both sides changed:
    timing = f"{SRC}/observability/timing.py"
    # The moved file: git has no common ancestor at the new path, so the user's edit shows as a
    # conflict against the template's version instead of being deleted with the old path.
    responses = f"{SRC}/responses.py"
    assert not [path for path in project_files(project) if path.suffix == ".rej"]
    assert files_with_markers(project) == {timing, responses}
    assert set(git(project, "diff", "--name-only", "--diff-filter=U").split()) == {
        timing,
        responses,
    }
    assert conflicts(project / timing) == [(USER_TIMING_LINE, V2_TIMING_LINE)]
    assert conflicts(project / responses) == [("\n\n" + USER_STREAMING_LINE, "")]

    # Resolve them as docs/updating.md says (here: the template's line, and the team's
    # addition), then run the project's own tests.
    resolve(project / timing, keep="theirs")
    resolve(project / responses, keep="ours")
    git(project, "add", timing, responses)
    # test_migrations walks the history down and up again, through the merge revision.
    check_updated_project(
        project,
        MEMORY,
        "tests/test_widgets.py",
        "tests/test_middleware.py",
        "tests/test_export.py",
        "tests/test_migrations.py",
    )


def test_update_without_template_change_changes_nothing(
    template_repo: Path, tmp_path: Path
) -> None:
    project = tmp_path / "update-demo"
    copier_copy(template_repo, project, V2)
    commit(project, "Generate the service")
    _add_widgets_endpoint(project)
    replace_once(project / SRC / "settings.py", *USER_SETTING)
    commit(project, "Our changes")
    head = git(project, "rev-parse", "HEAD")

    output = copier_update(project)

    assert f"Keeping template version {V2}" in output
    assert "copier update: no conflicts" in output
    assert git(project, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(project, "rev-parse", "HEAD") == head


def test_switching_the_cache_backend_and_back(template_repo: Path, tmp_path: Path, servers) -> None:
    project = tmp_path / "update-demo"
    copier_copy(template_repo, project, V2, cache_backend="memory")
    commit(project, "Generate the service")
    generated = git(project, "rev-parse", "HEAD").strip()
    cache_redis = project / SRC / "cache_redis.py"
    assert not cache_redis.exists()
    assert "redis" not in dependencies(project) | locked_packages(project)

    copier_update(project, cache_backend="redis")

    assert recorded_answers(project)["cache_backend"] == "redis"
    assert cache_redis.is_file()
    assert "redis" in dependencies(project)
    assert "redis" in locked_packages(project)  # re-locked after the merge
    assert "REDIS_URL=" in (project / ".env.example").read_text()
    assert files_with_markers(project) == set()
    assert not [path for path in project_files(project) if path.suffix == ".rej"]
    servers.require(REDIS)
    check_updated_project(project, REDIS, "tests/test_cache.py")  # against the real Redis
    commit(project, "Switch to Redis")

    copier_update(project, cache_backend="memory")

    assert recorded_answers(project)["cache_backend"] == "memory"
    assert not cache_redis.exists()
    assert "redis" not in dependencies(project) | locked_packages(project)
    # Back exactly where it started: the files of the Redis variant are gone, nothing is left over.
    assert git(project, "diff", generated, "--stat") == ""
    assert git(project, "ls-files", "--others", "--exclude-standard") == ""


@pytest.mark.slow  # checks the updated service: lint, types, its tests
def test_renaming_the_package_keeps_the_teams_edits(template_repo: Path, tmp_path: Path) -> None:
    """`copier update -d package_name=...` from 0.1.0: src/<old> moves to src/<new> with the
    team's files and edits, instead of being deleted."""
    project = tmp_path / "update-demo"
    copier_copy(template_repo, project, V1)
    commit(project, "Generate the service")
    _add_widgets_endpoint(project)
    replace_once(project / SRC / "settings.py", *USER_SETTING)
    commit(project, "Our changes")

    output = copier_update(project, package_name="renamed_demo")

    assert "moved src/update_demo -> src/renamed_demo" in output
    renamed = project / "src" / "renamed_demo"
    assert recorded_answers(project)["package_name"] == "renamed_demo"
    assert not (project / SRC).exists()
    assert (renamed / "api" / "widgets.py").read_text() == WIDGETS
    assert (project / "tests" / "test_widgets.py").read_text() == WIDGETS_TEST
    # What git cannot place without a common ancestor at the new path is an inline conflict,
    # only in the moved package: keep the team's side in the files they edited, the template's
    # (0.2.0) in the others.
    conflicted = files_with_markers(project)
    assert {path for path in conflicted if not path.startswith("src/renamed_demo/")} == set()
    edited = {"src/renamed_demo/api/__init__.py", "src/renamed_demo/settings.py"}
    for path in conflicted:
        resolve(project / path, keep="ours" if path in edited else "theirs")
        git(project, "add", path)
    assert (renamed / "api" / "__init__.py").read_text().endswith(WIDGETS_REGISTRATION)
    assert USER_SETTING[1] in (renamed / "settings.py").read_text()
    assert 'packages = ["src/renamed_demo"]' in (project / "pyproject.toml").read_text()
    assert "from renamed_demo." in (project / "tests" / "conftest.py").read_text()
    run_ok(["uv", "lock"], project, project_env(MEMORY))
    check_updated_project(project, MEMORY, "tests/test_widgets.py", "tests/test_cli.py")


# ------------------------------------------------------------------ files the template removed

# The pattern proofs (naive twins, the comparison runner) left the generated service for the
# template repository's bench/ (hooks/removed_files.json lists them).
TWIN_FILE = "src/{package_name}/bench/runner.py"
REMOVED = [
    f"{SRC}/bench/{name}.py"
    for name in ("apps", "cache_keys", "data", "pooler", "report", "routes", "runner", "session")
]
USER_RUNNER_LINE = "# Our own figure, added by the team.\n"


def _last_version_with(path: str) -> str:
    """The newest commit of this repository whose template still shipped ``path``."""
    last = git(REPO_ROOT, "rev-list", "-1", "HEAD", "--", path).strip()
    shipped = subprocess.run(
        ["git", "cat-file", "-e", f"{last}:{path}"], cwd=REPO_ROOT, check=False
    )
    return last if shipped.returncode == 0 else f"{last}^"


def _release_after(tmp_path_factory: pytest.TempPathFactory, shipped: str) -> Path:
    """0.1.0: the last real commit of this repository whose template shipped ``shipped`` (a
    project path); 0.2.0: this working tree (uncommitted edits included)."""
    repo = tmp_path_factory.mktemp("release") / "copier-fastapi-perf"
    repo.mkdir()
    old = _last_version_with(f"template/{shipped.format(package_name='{{package_name}}')}")
    archive = subprocess.run(
        ["git", "archive", "--format=tar", old], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(repo)], input=archive, check=True)
    git(repo, "init", "--quiet")
    commit(repo, f"release {V1}: {old}")
    git(repo, "tag", V1)
    git(repo, "rm", "-r", "--quiet", ".")
    _copy_working_tree(repo)
    commit(repo, f"release {V2}")
    git(repo, "tag", V2)
    return repo


@pytest.fixture(scope="module")
def twins_release_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _release_after(tmp_path_factory, TWIN_FILE)


@pytest.mark.slow  # checks the updated service: lint, types, its tests
def test_update_removes_the_twins_from_a_service_that_did_not_edit_them(
    twins_release_repo: Path, tmp_path: Path
) -> None:
    project = tmp_path / "update-demo"
    copier_copy(twins_release_repo, project, V1)
    assert all((project / path).is_file() for path in REMOVED)
    commit(project, "Generate the service")

    copier_update(project)

    assert recorded_answers(project)["_commit"] == V2
    assert [path for path in REMOVED if (project / path).exists()] == []
    assert files_with_markers(project) == set()
    assert git(project, "diff", "--name-only", "--diff-filter=U") == ""
    git(project, "add", "--all")
    # The bench tests that start no servers: the command still imports without its twins.
    check_updated_project(
        project,
        MEMORY,
        "tests/test_bench.py::test_bad_input_exits_2_saying_what_is_wrong",
        "tests/test_bench.py::test_what_counts_as_a_regression",
        "tests/test_projects.py",
    )


def test_update_keeps_an_edited_twin_as_a_conflict(
    twins_release_repo: Path, tmp_path: Path
) -> None:
    project = tmp_path / "update-demo"
    copier_copy(twins_release_repo, project, V1)
    commit(project, "Generate the service")
    runner = project / SRC / "bench" / "runner.py"
    edited = runner.read_text() + USER_RUNNER_LINE
    runner.write_text(edited)
    commit(project, "Our figure")

    output = copier_update(project)

    runner_path = f"{SRC}/bench/runner.py"
    assert f"{runner_path}: the template no longer ships this file and you had edited it" in output
    # Not an unmerged path for git, listed at the end all the same.
    assert f"(docs/updating.md, step 3):\n    {runner_path}\n" in output
    # The team's version on its side, nothing on the template's: keep it, or delete the file.
    assert conflicts(runner) == [(edited, "")]
    assert files_with_markers(project) == {runner_path}
    assert [path for path in REMOVED if (project / path).exists()] == [runner_path]

    # Kept: a second update leaves the team's file alone.
    resolve(runner, keep="ours")
    assert runner.read_text() == edited
    commit(project, "Keep our runner")
    copier_update(project)
    assert runner.read_text() == edited
    assert files_with_markers(project) == set()


# ------------------------------------------------------------------ files the template moved

# Issue 26's layout moved modules into packages, renamed others, and moved the load-test command
# out of the service's package; each old path is in hooks/removed_files.json. (old, new), under
# src/.
PKG = "update_demo"
MOVED = [
    (f"{PKG}/observability.py", f"{PKG}/observability/resources.py"),
    (f"{PKG}/timing.py", f"{PKG}/observability/timing.py"),
    (f"{PKG}/request_log.py", f"{PKG}/observability/request_log.py"),
    (f"{PKG}/logs.py", f"{PKG}/observability/logs.py"),
    (f"{PKG}/metrics.py", f"{PKG}/observability/metrics.py"),
    (f"{PKG}/tracing.py", f"{PKG}/observability/tracing.py"),
    (f"{PKG}/server.py", f"{PKG}/http_protocol.py"),
    *(
        (f"{PKG}/bench/{name}.py", f"{PKG}_bench/{name}.py")
        for name in ("__init__", "bare", "command", "driver", "load", "servers")
    ),
]
USER_OBSERVABILITY_LINE = "# Our own pool gauges go here, added by the team.\n"


@pytest.fixture(scope="module")
def moved_release_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _release_after(tmp_path_factory, "src/{package_name}/observability.py")


def test_update_keeps_an_edited_moved_file_as_a_conflict(
    moved_release_repo: Path, tmp_path: Path
) -> None:
    project = tmp_path / "update-demo"
    copier_copy(moved_release_repo, project, V1, cache_backend="redis")
    commit(project, "Generate the service")
    assert all((project / "src" / old).is_file() for old, _ in MOVED)
    edited_path = f"{SRC}/observability.py"
    edited = (project / edited_path).read_text() + USER_OBSERVABILITY_LINE
    (project / edited_path).write_text(edited)
    commit(project, "Our gauges")

    output = copier_update(project)

    # The team's version at the old path, nothing on the template's side: nothing is lost.
    assert f"{edited_path}: the template no longer ships this file and you had edited it" in output
    assert conflicts(project / edited_path) == [(edited, "")]
    assert files_with_markers(project) == {edited_path}
    # The unedited ones (tracing.py rendered for Redis) moved without a trace; every new path is
    # the template's.
    assert [old for old, _ in MOVED if (project / "src" / old).exists()] == [MOVED[0][0]]
    assert all((project / "src" / new).is_file() for _, new in MOVED)
