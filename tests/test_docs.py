"""The documentation: a short README, task pages under docs/, and a MkDocs site built from them.

Every relative link must reach a file, every ``#anchor`` a heading of its page (GitHub's and
MkDocs' slugs: lowercase, punctuation other than hyphens and underscores dropped, spaces to
hyphens), and mkdocs.yml's nav must list exactly the pages under docs/. The site build itself
runs only where the docs extra is installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS_YML = ROOT / "mkdocs.yml"
README_MAX_LINES = 400

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"`+[^`]*`+")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:, ...


def doc_pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def prose_lines(path: Path) -> list[str]:
    """The page's lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def heading_text(raw: str) -> str:
    """A heading as rendered text: code spans keep their text, links their label."""
    text = re.sub(r"`+([^`]*)`+", r"\1", raw)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return text.replace("*", "")


def slug(text: str, *, mkdocs: bool = False) -> str:
    """The anchor of a heading: lowercase, punctuation dropped (hyphens and underscores kept),
    each space a hyphen (GitHub); MkDocs also merges runs of spaces and hyphens into one."""
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return re.sub(r"[-\s]+", "-", text.strip()) if mkdocs else text.replace(" ", "-")


def anchors(path: Path, *, mkdocs: bool = False) -> set[str]:
    """The anchors of a page's headings, with the numbering of repeated ones (GitHub: -1, -2;
    MkDocs: _1, _2)."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(heading_text(match.group(2)), mkdocs=mkdocs)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}{'_' if mkdocs else '-'}{count}")
    return found


def links(path: Path) -> list[str]:
    """Every Markdown link target of a page, outside code blocks and code spans."""
    targets = []
    for line in prose_lines(path):
        targets.extend(LINK.findall(CODE_SPAN.sub("", line)))
    return targets


def nav_pages() -> list[str]:
    """The .md files mkdocs.yml's nav names, in order (nested sections flattened)."""
    text = MKDOCS_YML.read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:  # a tiny reader for the nav's "- Title: page.md" lines
        return re.findall(r"^\s*-\s*(?:[^:\n]*:\s*)?([\w./-]+\.md)\s*$", text, re.MULTILINE)

    def flatten(entry: object) -> list[str]:
        if isinstance(entry, str):
            return [entry] if entry.endswith(".md") else []
        if isinstance(entry, list):
            return [page for item in entry for page in flatten(item)]
        if isinstance(entry, dict):
            return [page for value in entry.values() for page in flatten(value)]
        return []

    return flatten(yaml.safe_load(text).get("nav", []))


def test_readme_is_a_short_front_door():
    text = README.read_text(encoding="utf-8")
    n_lines = len(text.splitlines())
    assert n_lines <= README_MAX_LINES, (
        f"README.md has {n_lines} lines (at most {README_MAX_LINES})"
    )
    for needed in ("make demo", "make test", "source .venv/bin/activate"):
        assert needed in text, f"README.md does not mention {needed!r}"


def test_readme_keeps_the_reproduce_markers():
    """scripts/readme_reproduce.py --write replaces the text between these markers."""
    text = README.read_text(encoding="utf-8")
    begin, end = "<!-- reproduce:begin -->", "<!-- reproduce:end -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    assert text.index(begin) < text.index(end)


def test_readme_links_every_docs_page():
    linked = {(README.parent / target.split("#")[0]).resolve() for target in links(README)}
    missing = [page.relative_to(ROOT).as_posix() for page in doc_pages() if page not in linked]
    assert not missing, f"README.md does not link to {missing}"


@pytest.mark.parametrize(
    "page", [README, *doc_pages()], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_relative_links_and_anchors_resolve(page: Path):
    problems = []
    for target in links(page):
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no file {dest}")
            continue
        if page.is_relative_to(DOCS) and not dest.is_relative_to(DOCS):
            problems.append(f"{target}: outside docs/, so MkDocs cannot follow it")
        if anchor and dest.suffix == ".md":
            if anchor not in anchors(dest):
                problems.append(f"{target}: no heading of {dest.name} has the anchor #{anchor}")
            elif dest.is_relative_to(DOCS) and anchor not in anchors(dest, mkdocs=True):
                problems.append(f"{target}: GitHub and MkDocs spell this heading's anchor apart")
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_nav_lists_every_docs_page():
    assert re.search(r"^docs_dir:\s*docs\s*$", MKDOCS_YML.read_text(), re.MULTILINE)
    nav = nav_pages()
    assert nav, "mkdocs.yml has no nav"
    missing = [p for p in nav if not (DOCS / p).is_file()]
    assert not missing, f"nav entries without a page: {missing}"
    pages = {page.relative_to(DOCS).as_posix() for page in doc_pages()}
    unlisted = sorted(pages - set(nav))
    assert not unlisted, f"pages missing from mkdocs.yml's nav: {unlisted}"
    assert len(nav) == len(set(nav)), f"nav lists a page twice: {nav}"


def test_mkdocs_build_strict(tmp_path: Path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("the docs extra is not installed (pip install -e .[docs])")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(MKDOCS_YML),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
