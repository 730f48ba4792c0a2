"""The README and docs/ point at what exists: every relative link resolves, and every config, sweep
file and bench script they name is in the repository."""

import re

import pytest

from conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_relative_link_and_named_file_exists(page):
    text = page.read_text()
    links = [target for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) if "://" not in target]
    assert [target for target in links if not (page.parent / target).exists()] == []
    named = set(re.findall(r"\b((?:configs|sweeps|bench|ray_configs)/[\w./-]+\.(?:yaml|py|sh))\b", text))
    assert sorted(path for path in named if "<" not in path and not (REPO / path).exists()) == []
