"""The documentation: README.md stays a short front door, and docs/ builds with no broken link.

`mkdocs build --strict` fails on a link to a missing page or anchor and on a page left out of
mkdocs.yml's nav (its `validation` settings), so links between the pages cannot rot.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from template_config import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
README_MAX_LINES = 120
# The fast tier first, then the full suite: .ci/run runs exactly the full one.
FAST_TESTS = 'uv run pytest -m "not slow"'
FULL_TESTS = "uv run pytest"
# A Markdown link's target: [text](target), without a URL scheme or a bare #anchor.
LOCAL_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)")


def test_readme_is_short_and_names_both_test_commands() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()

    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    commands = [line.strip() for line in lines]
    assert FAST_TESTS in commands
    assert FULL_TESTS in commands
    assert commands.index(FAST_TESTS) < commands.index(FULL_TESTS)


def test_readme_links_point_at_files_that_exist() -> None:
    targets = LOCAL_LINK.findall(README.read_text(encoding="utf-8"))

    assert targets
    missing = [t for t in targets if not (REPO_ROOT / t.partition("#")[0]).exists()]
    assert missing == []


def test_every_page_is_in_the_nav() -> None:
    config = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    in_nav = {page for entry in config["nav"] for page in entry.values()}

    assert in_nav == {path.name for path in DOCS.glob("*.md")}


def test_docs_build_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO_ROOT,
        # Material's banner about MkDocs 2.0 is not a build warning; keep it out of the output.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert (site / "index.html").is_file()
    assert (site / "updating" / "index.html").is_file()
