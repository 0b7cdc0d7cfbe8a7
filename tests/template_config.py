"""What the tests know about the template, read from copier.yml so new questions and choices
are picked up without editing the tests."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
COPIER_YML = REPO_ROOT / "copier.yml"

# The questions whose choices span the combinations every test renders.
AXES = ("orm", "database", "cache_backend")

# Answers the tests give on top of copier.yml's defaults (project_name has no default).
BASE_ANSWERS = {"project_name": "Bench Service"}


class _CopierLoader(yaml.SafeLoader):
    """SafeLoader that understands copier's `!include` (path relative to the repository root)."""


def _include(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    path = REPO_ROOT / loader.construct_scalar(node)  # type: ignore[arg-type]
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_CopierLoader)  # noqa: S506


_CopierLoader.add_constructor("!include", _include)


@cache
def copier_config() -> dict[str, Any]:
    """copier.yml's documents merged into one mapping, like copier does."""
    merged: dict[str, Any] = {}
    for document in yaml.load_all(COPIER_YML.read_text(encoding="utf-8"), Loader=_CopierLoader):  # noqa: S506
        if isinstance(document, dict):
            merged.update(document)
    return merged


def questions() -> dict[str, dict[str, Any]]:
    """Every question (settings start with `_`); a short-hand `name: value` becomes a default."""
    result = {}
    for name, spec in copier_config().items():
        if name.startswith("_"):
            continue
        result[name] = spec if isinstance(spec, dict) else {"default": spec}
    return result


def choice_values(question: str) -> list[str]:
    """The values a question offers, whatever form `choices` takes in copier.yml."""
    choices = questions()[question]["choices"]
    items = choices.values() if isinstance(choices, dict) else choices
    values = []
    for item in items:
        if isinstance(item, dict):  # {value: ..., validator: ...}
            item = item["value"]
        elif isinstance(item, list):  # [label, value]
            item = item[1]
        values.append(str(item))
    return values


@dataclass(frozen=True)
class Combination:
    answers: dict[str, str]

    @property
    def id(self) -> str:
        return "-".join(self.answers[axis] for axis in AXES)

    def __getattr__(self, name: str) -> str:
        if name.startswith("_") or name == "answers":
            raise AttributeError(name)
        try:
            return self.answers[name]
        except KeyError:
            raise AttributeError(name) from None

    def __hash__(self) -> int:
        return hash(self.id)


def combinations() -> list[Combination]:
    """Every orm x database x cache_backend combination copier.yml offers."""
    return [
        Combination(dict(zip(AXES, values, strict=True)))
        for values in itertools.product(*(choice_values(axis) for axis in AXES))
    ]


def default_combination() -> Combination:
    return Combination({axis: str(questions()[axis]["default"]) for axis in AXES})
