"""The code stays in modules a reader can hold: one topic per file, no Python file over about 400 lines.

The backbone files (``maskdcpt/models/``) are exempt: each is one network, kept whole so that it reads like its
paper's architecture figure.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 420
FOLDERS = ("maskdcpt", "pipelines", "scripts", "tests")
EXEMPT = ("maskdcpt/models/",)


def test_no_python_file_is_over_the_line_limit():
    files = [f for folder in FOLDERS for f in (REPO / folder).rglob("*.py")]
    assert len(files) > 50, "the scan found too few files: wrong root?"
    too_long = {}
    for f in files:
        rel = f.relative_to(REPO).as_posix()
        if rel.startswith(EXEMPT):
            continue
        n = len(f.read_text(encoding="utf-8").splitlines())
        if n > LIMIT:
            too_long[rel] = n
    assert not too_long, f"split these by topic (limit {LIMIT} lines): {too_long}"
