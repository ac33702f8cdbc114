"""References to docs/design.md in code, tests and documents point at sections it has.

Code and tests cite the contract as `docs/design.md, "Section"` (or `("Section")`,
several joined by `and`), or as a link `docs/design.md#anchor`. A section renamed or
removed leaves such a reference pointing nowhere; this test finds every one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DESIGN = REPO / "docs" / "design.md"
SEARCHED = [
    *sorted((REPO / "tokencli").rglob("*.py")),
    *sorted(path for path in (REPO / "tests").rglob("*.py") if path.name != "test_docs.py"),
    *sorted((REPO / "bench").rglob("*.py")),
    REPO / "README.md",
    REPO / "SECURITY.md",
    REPO / "docs" / "benchmarks.md",
]
# `docs/design.md` then either #anchor, or quoted section names after a comma or paren.
CITATION = re.compile(
    r'docs/design\.md(?:#(?P<anchor>[\w-]+)|[ ,(]+(?P<names>"[^"]+"(?:(?: and |, )"[^"]+")*))'
)


def headings() -> list[str]:
    """The section titles of docs/design.md, as cited: without #s and backticks."""
    return [
        line.lstrip("#").strip().replace("`", "")
        for line in DESIGN.read_text().splitlines()
        if line.startswith("#")
    ]


def anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def flattened(path: Path) -> str:
    """The file's text with line breaks (and comment markers after them) as spaces, so
    a section name wrapped over two lines reads whole."""
    return re.sub(r"\s*\n\s*(?:# ?)?", " ", path.read_text())


def citations() -> list[tuple[str, str]]:
    found = []
    for path in SEARCHED:
        for match in CITATION.finditer(flattened(path)):
            where = str(path.relative_to(REPO))
            if match["anchor"]:
                found.append((where, "#" + match["anchor"]))
            for name in re.findall(r'"([^"]+)"', match["names"] or ""):
                found.append((where, name))
    return found


def test_the_search_finds_citations() -> None:
    # Guards the test itself: a pattern that matched nothing would pass vacuously.
    assert len(citations()) >= 3


@pytest.mark.parametrize(("where", "cited"), citations())
def test_every_cited_section_exists(where: str, cited: str) -> None:
    titles = headings()
    if cited.startswith("#"):
        assert cited[1:] in {anchor(title) for title in titles}, (where, cited)
    else:
        assert cited in titles, f"{where} cites docs/design.md section {cited!r}; it has {titles}"
