"""scripts/release VERSION, in a temporary git repository: it tags a version from its CHANGELOG.md
entry, and refuses one without an entry."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from template_config import REPO_ROOT

RELEASE = REPO_ROOT / "scripts" / "release"
CHANGELOG = """# Changelog

## Unreleased

Nothing yet.

## 0.2.0

**Changes for generated services**

- A new route.

**Action on update**: none.

## 0.1.0

Initial release.
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True
    ).stdout


def release(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RELEASE), *args], cwd=repo, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key in [k for k in os.environ if k.startswith("GIT_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "config", "user.name", "Release Test")
    git(tmp_path, "config", "user.email", "release@example.com")
    (tmp_path / "CHANGELOG.md").write_text(CHANGELOG, encoding="utf-8")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "CHANGELOG")
    return tmp_path


def test_tags_a_version_with_its_changelog_entry(repo: Path) -> None:
    result = release(repo, "0.2.0")

    assert result.returncode == 0, result.stderr
    assert git(repo, "cat-file", "-t", "0.2.0").strip() == "tag"  # annotated
    assert git(repo, "rev-parse", "0.2.0^{commit}") == git(repo, "rev-parse", "HEAD")
    message = git(repo, "tag", "-l", "--format=%(contents)", "0.2.0")
    assert message.startswith("0.2.0\n\n**Changes for generated services**")
    assert "- A new route." in message
    assert "0.1.0" not in message  # the entry stops at the next version
    assert "git push origin 0.2.0" in result.stdout


@pytest.mark.parametrize("version", ["0.3.0", "Unreleased", "0.2", "v0.2.0"])
def test_refuses_a_version_without_a_changelog_entry(repo: Path, version: str) -> None:
    result = release(repo, version)

    assert result.returncode == 1
    assert result.stderr.startswith("release: ")
    assert git(repo, "tag", "-l") == ""


def test_refuses_an_existing_tag_and_a_dirty_tree(repo: Path) -> None:
    assert release(repo, "0.1.0").returncode == 0
    again = release(repo, "0.1.0")
    assert again.returncode == 1
    assert "exists already" in again.stderr

    (repo / "CHANGELOG.md").write_text(CHANGELOG + "\n## 0.0.1\n\nEarlier.\n", encoding="utf-8")
    dirty = release(repo, "0.2.0")
    assert dirty.returncode == 1
    assert "uncommitted" in dirty.stderr
    assert git(repo, "tag", "-l").split() == ["0.1.0"]


def test_a_version_whose_entry_names_its_commit_is_tagged_there_only(repo: Path) -> None:
    first = git(repo, "rev-parse", "HEAD").strip()
    named = CHANGELOG.replace("Initial release.", f"Initial release: commit `{first[:7]}`.")
    (repo / "CHANGELOG.md").write_text(named, encoding="utf-8")
    git(repo, "commit", "-q", "-am", "CHANGELOG: the commit of 0.1.0")

    at_head = release(repo, "0.1.0")
    assert at_head.returncode == 1
    assert f"scripts/release 0.1.0 {first[:7]}" in at_head.stderr
    assert git(repo, "tag", "-l") == ""

    at_named = release(repo, "0.1.0", first[:7])
    assert at_named.returncode == 0, at_named.stderr
    assert git(repo, "rev-parse", "0.1.0^{commit}").strip() == first
