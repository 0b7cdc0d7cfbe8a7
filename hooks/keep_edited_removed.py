"""Migration: keep the team's edits to files the template no longer ships.

`copier update` deletes every file the new template version no longer has, edited or not (only
git still holds the edits). hooks/removed_files.json lists such files with the SHA-256 of every
content the template ever shipped for them. Before the update, a listed file whose content is not
one of those (the team edited it) is saved in the git directory; after the update, if copier
deleted it, it is put back wrapped in copier's conflict markers, the team's version on the
"before updating" side and nothing on the "after updating" side: keep it, or delete the file.

Usage: keep_edited_removed.py before|after ANSWERS_FILE; paths in the manifest are relative to
the project, `{question}` in them is replaced by the recorded answer. Idempotent: a file the team
kept on an earlier update is still there after the next one, and is left alone.
"""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml  # installed with copier, which runs this script

MANIFEST = Path(__file__).with_name("removed_files.json")
OURS, THEIRS, END = "<<<<<<< before updating", "=======", ">>>>>>> after updating"


def _saved_dir() -> Path:
    git_dir = subprocess.run(
        ["git", "rev-parse", "--absolute-git-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Path(git_dir) / "copier-edited-removed"


def _edited(answers_file: str) -> list[Path]:
    answers = yaml.safe_load(Path(answers_file).read_text(encoding="utf-8")) or {}
    shipped: dict[str, list[str]] = json.loads(MANIFEST.read_text(encoding="utf-8"))
    edited = []
    for pattern, hashes in shipped.items():
        path = Path(pattern.format_map(answers))
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() not in hashes:
            edited.append(path)
    return edited


def before(answers_file: str) -> None:
    saved = _saved_dir()
    shutil.rmtree(saved, ignore_errors=True)
    for path in _edited(answers_file):
        (saved / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, saved / path)


def after() -> None:
    saved = _saved_dir()
    if not saved.is_dir():
        return
    for copy in sorted(p for p in saved.rglob("*") if p.is_file()):
        path = copy.relative_to(saved)
        if path.exists():  # not in the old version either: the team's own file, as it was
            continue
        ours = copy.read_text(encoding="utf-8")
        path.parent.mkdir(parents=True, exist_ok=True)
        newline = "" if ours.endswith("\n") else "\n"
        path.write_text(f"{OURS}\n{ours}{newline}{THEIRS}\n{END}\n", encoding="utf-8")
        print(
            f"{path}: the template no longer ships this file and you had edited it; it is kept"
            " with conflict markers: keep your side, or delete the file (template CHANGELOG)",
            file=sys.stderr,
        )
    shutil.rmtree(saved)


def main(stage: str, answers_file: str) -> int:
    if stage == "before":
        before(answers_file)
    elif stage == "after":
        after()
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
