"""`copier copy` from the command line, the way README.md tells users to run it: refused answers,
free text that needs escaping, a failing task, a directory that is not empty, and a generated
service that adds its own migration.

Copier runs from this environment's Python on the working tree (`--vcs-ref=HEAD` includes
uncommitted edits), with --trust and --defaults, and no terminal (stdin is /dev/null).
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import project_env, run, run_ok
from template_config import REPO_ROOT, Combination

COPIER = [sys.executable, "-m", "copier", "copy", "--trust", "--defaults", "--vcs-ref=HEAD"]
DEFAULT = Combination({"orm": "sqlalchemy", "database": "sqlite", "cache_backend": "memory"})


def copier_copy(destination: Path, env: dict[str, str] | None = None, **answers: str):
    data = [arg for item in answers.items() for arg in ("-d", "=".join(item))]
    return run([*COPIER, *data, str(REPO_ROOT), str(destination)], destination.parent, env)


# --------------------------------------------------------------------------- refused answers


@pytest.mark.parametrize(
    ("answers", "message"),
    [
        (
            {"project_name": "X", "project_slug": "9bad"},
            "Validation error for question 'project_slug': project_slug \"9bad\" must be",
        ),
        (
            {"project_name": "日本語"},
            "Validation error for question 'project_slug': project_slug is empty: it is derived"
            " from project_name",
        ),
        (
            {"project_name": "X", "package_name": "fastapi"},
            "Validation error for question 'package_name': package_name \"fastapi\" is the import"
            " name of one of the service's dependencies",
        ),
        ({"project_name": "X", "orm": "mongo"}, "Invalid choice for 'orm': 'mongo' is not in"),
    ],
)
def test_a_refused_answer_stops_the_copy_before_anything_is_written(
    tmp_path: Path, answers: dict[str, str], message: str
) -> None:
    destination = tmp_path / "service"

    result = copier_copy(destination, **answers)

    assert result.returncode != 0, result.stdout
    assert not destination.exists()
    # Copier 9.19 prints an answer refused on the command line (-d, --data-file, --defaults) as a
    # Python traceback: Question.validate_answer raises ValueError, and copier's CLI prints only
    # its own UserMessageError without one. A template cannot change that (an exception raised
    # while rendering a validator becomes the same ValueError), so the message is the last line;
    # the interactive prompt shows it alone and asks again.
    assert result.stdout.rstrip().splitlines()[-1].startswith(f"ValueError: {message}"), (
        result.stdout
    )


# --------------------------------------------------------------------------- free text

HOSTILE = {
    "project_name": 'My "Quoted" Svc \\ {{ x }} {% y %} Ünïcødé 日本語',
    "project_slug": "quoted-svc",
    "description": "Says \"hi\" & 'bye' \\ {braces} `code` *not bold* <b>tag</b>",
    "author_name": 'O\'Brien "The Dev" Zoë \\',
}


def test_free_text_answers_are_escaped_and_the_project_runs(tmp_path: Path, servers) -> None:
    """Quotes, backslashes, braces (Jinja's too), Markdown and non-ASCII in every free-text answer:
    the project installs, passes its own checks and shows each answer as typed."""
    project = tmp_path / "quoted-svc"
    run_ok(
        [*COPIER, *[a for item in HOSTILE.items() for a in ("-d", "=".join(item))]]
        + [str(REPO_ROOT), str(project)],
        tmp_path,
    )
    env = project_env(DEFAULT)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert pyproject["description"] == HOSTILE["description"]
    assert pyproject["authors"][0]["name"] == HOSTILE["author_name"]
    readme = (project / "README.md").read_text(encoding="utf-8").splitlines()
    assert readme[0] == r"""# My "Quoted" Svc \\ {{ x }} {% y %} Ünïcødé 日本語"""
    assert readme[2] == r"""Says "hi" \& 'bye' \\ {braces} \`code\` \*not bold\* \<b\>tag\</b\>."""

    run_ok(["uv", "sync", "--locked"], project, env)
    for check in (["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]):
        run_ok(["uv", "run", *check], project, env)
    shown = run_ok(
        [
            "uv",
            "run",
            "python",
            "-c",
            "import json, importlib.metadata as m, quoted_svc\n"
            "from quoted_svc.main import create_app\n"
            "from quoted_svc.settings import Settings\n"
            "app = create_app(Settings())\n"
            "meta = m.metadata('quoted-svc')\n"
            "print(json.dumps([app.title, Settings().app.name, quoted_svc.__doc__,"
            " meta['Summary'], meta['Author'] or meta['Author-email']]))",
        ],
        project,
        env,
    )
    title, name, docstring, summary, author = json.loads(shown.splitlines()[-1])
    assert title == name == HOSTILE["project_name"]
    assert " ".join(docstring.split()) == f"{HOSTILE['project_name']}: {HOSTILE['description']}."
    assert summary == HOSTILE["description"]
    assert HOSTILE["author_name"].replace("\\", "") in author.replace("\\", "")
    # The CLI imports (its package does not shadow a dependency), and the tests that cover the
    # settings and the app's start-up pass.
    run_ok(["uv", "run", "quoted-svc", "--help"], project, env)
    run_ok(["uv", "run", "pytest", "-q", "tests/test_health.py", "tests/test_cli.py"], project, env)


# --------------------------------------------------------------------------- tasks


def test_a_failing_task_fails_the_copy(tmp_path: Path) -> None:
    """`uv lock` cannot resolve (offline, empty cache): the copy exits non-zero and says why."""
    destination = tmp_path / "service"
    env = project_env(None, UV_OFFLINE="1", UV_NO_CACHE="1")

    result = copier_copy(destination, env, project_name="Offline Service")

    assert result.returncode != 0, result.stdout
    assert "`uv lock` failed" in result.stdout
    assert "uv_lock.py" in result.stdout  # copier names the task that failed


# --------------------------------------------------------------------------- destination


def test_a_copy_into_a_directory_with_its_own_readme_finishes(tmp_path: Path) -> None:
    """A repository created with a README: the copy keeps it and completes (no terminal)."""
    destination = tmp_path / "service"
    destination.mkdir()
    readme = destination / "README.md"
    readme.write_text("# Our service\n\nWritten by the team.\n")

    result = copier_copy(destination, project_name="Existing Repo")

    assert result.returncode == 0, result.stdout
    assert readme.read_text() == "# Our service\n\nWritten by the team.\n"
    for path in ("pyproject.toml", ".copier-answers.yml", "uv.lock", ".git"):
        assert (destination / path).exists(), f"{path} missing after the copy:\n{result.stdout}"


# --------------------------------------------------------------------------- next steps


@pytest.mark.slow  # installs the service (npm ci, uv sync)
@pytest.mark.parametrize("orm", ["sqlalchemy", "prisma"])
def test_a_copy_ends_with_the_commands_that_run_the_service(
    tmp_path: Path, orm: str, npm_ci
) -> None:
    """The copy prints what to run next (indented under "Next steps:"); run in order, up to
    `serve`, they install the service and migrate its database."""
    project = tmp_path / "next-steps"
    result = copier_copy(project, project_name="Next Steps", orm=orm)
    assert result.returncode == 0, result.stdout

    after = result.stdout.split("Next steps:", 1)[-1].splitlines()
    shown = [line.strip() for line in after if line.startswith("    ") and line.strip()]
    install = ["npm ci", "uv sync"] if orm == "prisma" else ["uv sync"]
    assert shown == [
        f"cd {project}",
        *install,
        "uv run next-steps db upgrade",
        "uv run next-steps serve",
    ], result.stdout
    env = project_env(Combination({**DEFAULT.answers, "orm": orm}))
    for command in shown[1:-1]:
        if command == "npm ci":  # with the session's one build of the native package
            npm_ci(project, env)
        else:
            run_ok(command.split(), project, env)
    assert "database at head" in run_ok(["uv", "run", "next-steps", "db", "upgrade"], project, env)


# --------------------------------------------------------------------------- the service's own


@pytest.mark.slow  # installs the service and runs its tests
def test_a_revision_of_the_services_own_keeps_its_tests_passing(tmp_path: Path) -> None:
    """The team adds an Alembic revision on top of the template's: the generated tests check the
    database is at head, never a revision id, and the file Alembic writes passes the project's
    lint as it is (alembic.ini's post-write hooks format it)."""
    project = tmp_path / "own-revision"
    result = copier_copy(project, project_name="Own Revision")
    assert result.returncode == 0, result.stdout
    env = project_env(DEFAULT)
    run_ok(["uv", "sync", "--locked"], project, env)

    run_ok(
        ["uv", "run", "alembic", "revision", "-m", "team change", "--rev-id", "team1"], project, env
    )
    (revision,) = (project / "src/own_revision/db/migrations/versions").glob("team1_*.py")
    # A data migration: Alembic's stub with a statement each way.
    body = revision.read_text().replace("    pass", '    op.execute(sa.text("SELECT 1"))', 2)
    revision.write_text(body)
    heads = run_ok(["uv", "run", "alembic", "heads"], project, env)
    assert heads.split()[0] == "team1", heads

    run_ok(["uv", "run", "ruff", "check", "."], project, env)
    run_ok(["uv", "run", "ruff", "format", "--check", "."], project, env)
    run_ok(["uv", "run", "mypy"], project, env)
    run_ok(
        ["uv", "run", "pytest", "-q", "tests/test_cli.py", "tests/test_migrations.py"], project, env
    )
