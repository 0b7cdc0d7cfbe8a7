"""copier.yml's validators and computed defaults, through copier's own API.

Renders the working tree (vcs_ref="HEAD" makes copier include uncommitted edits) in pretend mode:
answers are computed and validated, nothing is written and no task runs.
"""

from __future__ import annotations

import keyword
import sys
import tomllib
from pathlib import Path
from typing import Any

import copier
import pytest

from template_config import BASE_ANSWERS, REPO_ROOT, choice_values, questions


def answers_for(tmp_path: Path, **data: Any) -> dict[str, Any]:
    worker = copier.run_copy(
        str(REPO_ROOT),
        tmp_path / "project",
        data={**BASE_ANSWERS, **data},
        defaults=True,
        unsafe=True,
        vcs_ref="HEAD",
        pretend=True,
        skip_tasks=True,
        quiet=True,
    )
    return dict(worker.answers.combined)


@pytest.mark.parametrize(
    ("question", "value"),
    [
        ("project_name", ""),
        ("project_name", "   "),
        ("project_slug", "9x"),
        ("project_slug", "Has Caps"),
        ("project_slug", "-svc"),
        # PEP 508: a distribution name ends with a letter or digit.
        ("project_slug", "rel-"),
        ("package_name", "json"),
        ("package_name", "class"),
        ("package_name", "1abc"),
        ("package_name", "my-pkg"),
        # The import names of dependencies: the package would shadow them.
        ("package_name", "fastapi"),
        ("package_name", "FastAPI"),
        ("package_name", "pydantic"),
        ("package_name", "sqlalchemy"),
        ("package_name", "typer"),
        ("author_email", "nope"),
        ("author_email", "a b@example.com"),
        ("author_email", 'a"b@example.com'),
        # One line of metadata each: no line breaks or other control characters.
        ("project_name", "Two\nLines"),
        ("project_name", "x" * 61),
        ("description", "Two\nLines"),
        ("author_name", "Tab\tName"),
    ],
)
def test_validator_rejects(tmp_path: Path, question: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"question '{question}'") as excinfo:
        answers_for(tmp_path, **{question: value})
    message = str(excinfo.value)
    # Copier prefixes "Validation error for question '<name>': "; the validator adds the reason.
    reason = message.split(":", 1)[1].strip()
    assert reason, message
    assert question in reason, f"the reason should name {question!r}: {message}"


@pytest.mark.parametrize(
    ("question", "value"),
    [
        ("project_name", "X"),
        ("project_slug", "a"),
        ("project_slug", "my-service-2"),
        ("package_name", "bench_service"),
        ("package_name", "Svc2"),
        ("package_name", "_internal"),
        ("project_name", 'My "Quoted" Service \\ {{ x }} {% y %} Ünïcødé 日本語'),
        ("description", 'Says "hi" \\ {braces} & <b>*markup*</b>'),
        ("author_name", 'O\'Brien "The Dev" Zoë'),
        ("author_email", "a@b.c"),
        ("author_email", "first.last+tag@example.org"),
    ],
)
def test_validator_accepts(tmp_path: Path, question: str, value: str) -> None:
    assert answers_for(tmp_path, **{question: value})[question] == value


@pytest.mark.parametrize(
    ("project_name", "slug", "package"),
    [
        ("Bench Service", "bench-service", "bench_service"),
        ("My API!", "my-api", "my_api"),
        ("  Orders -- v2  ", "orders-v2", "orders_v2"),
    ],
)
def test_computed_defaults(tmp_path: Path, project_name: str, slug: str, package: str) -> None:
    answers = answers_for(tmp_path, project_name=project_name)
    assert answers["project_slug"] == slug
    assert answers["package_name"] == package


def test_package_default_follows_an_explicit_slug(tmp_path: Path) -> None:
    answers = answers_for(tmp_path, project_slug="orders-api")
    assert answers["package_name"] == "orders_api"


def test_reserved_names_cover_keywords_and_stdlib() -> None:
    reserved = set(questions()["reserved_package_names"]["default"])
    public_stdlib = {name for name in sys.stdlib_module_names if not name.startswith("_")}
    expected = public_stdlib | set(keyword.kwlist) | set(keyword.softkwlist)
    assert sorted(expected - reserved) == []


def test_a_name_without_ascii_letters_says_what_to_type(tmp_path: Path) -> None:
    """The slug is derived from project_name; the message must say so and what to give."""
    with pytest.raises(ValueError, match="question 'project_slug'") as excinfo:
        answers_for(tmp_path, project_name="日本語")
    message = str(excinfo.value)
    assert "project_name" in message, message
    assert "-d project_slug=" in message, message

    answers = answers_for(tmp_path, project_name="日本語", project_slug="nihongo")
    assert (answers["project_slug"], answers["package_name"]) == ("nihongo", "nihongo")


@pytest.mark.parametrize("question", ["orm", "database", "cache_backend", "python_version"])
def test_a_choice_question_refuses_a_value_it_does_not_offer(tmp_path: Path, question: str) -> None:
    offered = choice_values(question)
    with pytest.raises(ValueError, match=f"'{question}': 'cobol' is not in") as excinfo:
        answers_for(tmp_path, **{question: "cobol"})
    assert all(repr(value) in str(excinfo.value) for value in offered), "the message lists them"


@pytest.mark.parametrize("version", choice_values("python_version"))
def test_python_version_reaches_every_file_that_names_one(tmp_path: Path, version: str) -> None:
    """The minimum Python is one answer: packaging, ruff, mypy, the image and CI all follow it."""
    project = tmp_path / "project"
    copier.run_copy(
        str(REPO_ROOT),
        project,
        data={**BASE_ANSWERS, "python_version": version},
        defaults=True,
        unsafe=True,
        vcs_ref="HEAD",
        skip_tasks=True,
        quiet=True,
    )
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["requires-python"] == f">={version}"
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + version.replace(".", "")
    assert pyproject["tool"]["mypy"]["python_version"] == version
    dockerfile = (project / "Dockerfile").read_text(encoding="utf-8")
    assert dockerfile.count(f"FROM python:{version}-slim AS ") == 2
    workflow = (project / ".github" / "workflows" / "ci.yml").read_text(encoding="utf-8")
    assert f'python-version: "{version}"' in workflow
