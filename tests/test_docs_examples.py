"""The runnable examples of the documentation (docs/examples/*.py) run and check themselves."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "docs" / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_docs_example_runs(path):
    runpy.run_path(str(path), run_name="__main__")


def test_every_example_is_included_in_a_page():
    pages = "\n".join(p.read_text() for p in (EXAMPLES[0].parents[1]).glob("*.md"))
    for path in EXAMPLES:
        assert f"examples/{path.name}" in pages, path.name
