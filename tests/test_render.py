"""Render every combination copier.yml offers and check the output is clean and complete."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ownership import RULES
from template_config import Combination, combinations, questions

COMBINATIONS = combinations()
JINJA_MARKERS = ("{{", "{%")


@pytest.fixture(params=COMBINATIONS, ids=[combo.id for combo in COMBINATIONS])
def project(request, render):
    return render(request.param)


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # binary file


def test_no_jinja_leftovers(project) -> None:
    problems = []
    for path in project.files:
        relative = path.relative_to(project.project_dir)
        if any(part.endswith(".jinja") or "{{" in part or "{%" in part for part in relative.parts):
            problems.append(f"{relative}: unrendered file name")
        text = _text(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if any(marker in line for marker in JINJA_MARKERS):
                problems.append(f"{relative}:{number}: {line.strip()}")
    assert problems == [], "Jinja leftovers:\n" + "\n".join(problems)


def test_no_empty_directories(project) -> None:
    """A directory whose files all belong to other answers is not rendered (deploy/ on SQLite)."""
    empty = [str(path.relative_to(project.project_dir)) for path in project.empty_dirs]
    assert empty == [], f"empty directories: {empty}"


def test_answers_file_has_every_question(project) -> None:
    recorded = yaml.safe_load((project.project_dir / ".copier-answers.yml").read_text())
    assert recorded.get("_src_path"), recorded
    missing, leaked = [], []
    for name, spec in questions().items():
        when = spec.get("when", True)
        if when is False:  # computed helpers (e.g. reserved_package_names) are never stored
            if name in recorded:
                leaked.append(name)
        elif when is True or name in project.answers:
            if name not in recorded:
                missing.append(name)
            else:
                assert str(recorded[name]) == str(project.answers[name]), name
    assert missing == [], f"questions missing from .copier-answers.yml: {missing}"
    assert leaked == [], f"`when: false` questions stored in .copier-answers.yml: {leaked}"


def _dependencies(pyproject: Path) -> list[Requirement]:
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = data.get("project", {})
    specs = list(project.get("dependencies", []))
    for group in project.get("optional-dependencies", {}).values():
        specs.extend(group)
    for group in data.get("dependency-groups", {}).values():
        specs.extend(item for item in group if isinstance(item, str))  # skip include-group
    return [Requirement(spec) for spec in specs]


def _matches(pattern: str, relative: Path) -> bool:
    target = relative.as_posix() if "/" in pattern else relative.name
    return fnmatch(target, pattern)


def test_files_and_dependencies_of_other_choices_are_absent(project) -> None:
    combo: Combination = project.combo
    pyproject = project.project_dir / "pyproject.toml"
    assert pyproject.is_file(), "the rendered project has no pyproject.toml"
    requirements = _dependencies(pyproject)
    problems = []
    for rule in RULES:
        if str(project.answers[rule.question]) == rule.value:
            continue
        for path in project.files:
            relative = path.relative_to(project.project_dir)
            for pattern in rule.files:
                if _matches(pattern, relative):
                    problems.append(f"{relative} belongs to {rule.question}={rule.value}")
        for name in rule.dependencies:
            for requirement in requirements:
                if canonicalize_name(requirement.name) == canonicalize_name(name) or name in {
                    canonicalize_name(extra) for extra in requirement.extras
                }:
                    problems.append(
                        f"dependency {requirement} belongs to {rule.question}={rule.value}"
                    )
    assert problems == [], f"{combo.id}:\n" + "\n".join(problems)
