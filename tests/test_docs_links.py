"""README stays a user's guide, and every relative link in it and in docs/ resolves.

Links are checked as GitHub renders them: a path relative to the linking file, and a
#fragment against the target's heading slugs (GitHub's rule: lower case, punctuation
dropped, spaces to hyphens, a repeated slug numbered -1, -2, ...).
"""
import os
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def documents():
    """The Markdown files whose links must resolve."""
    docs = sorted((ROOT / "docs").glob("*.md"))
    return [ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "benchmarks" / "README.md", *docs]


def prose(path):
    """The file's text without fenced code blocks (a `#` comment there is no heading)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def slug(heading):
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"`|\*\*|__", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path):
    """Every #fragment that a link to this file may name."""
    seen, out = {}, set()
    for heading in HEADING.findall(prose(path)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path):
    """Each relative link of this file that does not resolve, with the reason."""
    problems = []
    for target in LINK.findall(prose(path)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{target}: no such file {os.path.relpath(dest, ROOT)}")
        elif fragment and dest.suffix == ".md" and unquote(fragment) not in anchors(dest):
            problems.append(f"{target}: no heading #{fragment} in {os.path.relpath(dest, ROOT)}")
    return problems


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert path.exists(), f"{path.relative_to(ROOT)} is missing"
    assert broken_links(path) == [], f"broken links in {path.relative_to(ROOT)}"


def test_docs_folder_holds_the_guides_and_the_log():
    # the README points here for everything it no longer says itself
    names = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert {"research-log.md", "scaling-out.md", "serving.md", "reproducibility.md"} <= names


def test_readme_is_a_short_users_guide_with_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"
    assert "make compare" in text and "make test" in text


def test_slugs_follow_githubs_rule(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A: `b`'s c, +0.66\n\n## Same\n\n## Same\n\n```\n# not a heading\n```\n"
                    "[x](#a-bs-c-066) [y](#same-1) [z](#not-a-heading) [w](missing.md)\n")
    assert anchors(page) == {"a-bs-c-066", "same", "same-1"}
    assert [p.split(":")[0] for p in broken_links(page)] == ["#not-a-heading", "missing.md"]
