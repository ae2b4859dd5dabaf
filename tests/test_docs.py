"""The README and docs/ hold together: every relative link (file and #anchor) resolves, the configuration
reference lists exactly the keys this package adds to torchreid's config, and the README stays short."""
from __future__ import annotations

import glob
import os
import re
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from torchreid_scal.config import added_keys, get_default_config, leaf_keys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
README = os.path.join(REPO, "README.md")
CONFIGURATION = os.path.join(REPO, "docs", "configuration.md")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def markdown_files() -> List[str]:
    return [README] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def prose(path: str) -> str:
    """The file's text without its fenced code blocks (links there are code, not links)."""
    with open(path, encoding="utf-8") as f:
        return _FENCE.sub("", f.read())


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: str) -> Set[str]:
    """Every heading anchor of a markdown file (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen: Dict[str, int] = {}
    found = set()
    for heading in _HEADING.findall(prose(path)):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: str) -> Iterator[str]:
    for target in _LINK.findall(prose(path)):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            yield target


def broken_links(path: str) -> List[Tuple[str, str]]:
    """(link, why) for every relative link of ``path`` whose file or anchor does not exist."""
    broken = []
    for link in relative_links(path):
        target, _, anchor = link.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
        if not os.path.exists(resolved):
            broken.append((link, f"no file {os.path.relpath(resolved, REPO)}"))
        elif anchor and (not resolved.endswith(".md") or anchor not in anchors(resolved)):
            broken.append((link, f"no heading #{anchor} in {os.path.relpath(resolved, REPO)}"))
    return broken


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_every_relative_link_resolves(path):
    assert broken_links(path) == []


def test_the_link_check_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "other.md").write_text("# A title\n\n## Some `code`, and more?\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#some-code-and-more) [ok](#here) [gone](missing.md) [bad](other.md#nothing)\n"
                    "![img](pic.png) [web](https://example.org/x)\n\n## Here\n\n```\n[not a link](nowhere.md)\n```\n")
    assert [link for link, _ in broken_links(str(page))] == ["missing.md", "other.md#nothing", "pic.png"]


def documented_keys() -> List[str]:
    """The keys in the first column of docs/configuration.md's table of added keys."""
    text = prose(CONFIGURATION)
    section = text[text.index("## Keys added to torchreid's"):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    keys = []
    for line in section.splitlines():
        if line.startswith("| `"):
            keys += re.findall(r"`([\w.]+)`", line.split("|")[1])
    return keys


def test_the_configuration_reference_lists_exactly_the_added_keys():
    documented = documented_keys()
    existing = set(leaf_keys(get_default_config()))
    assert len(documented) == len(set(documented)), "a key is listed twice"
    assert [key for key in documented if key not in existing] == [], "listed, but not a config key"
    assert sorted(set(added_keys()) - set(documented)) == [], "added to torchreid's config, but not listed"
    assert sorted(set(documented) - set(added_keys())) == [], "listed, but upstream torchreid's own key"


def test_readme_is_short():
    with open(README, encoding="utf-8") as f:
        assert len(f.read().splitlines()) <= 250


def cited_tests(path: str) -> Iterator[Tuple[str, str]]:
    """``(file under tests/, test name)`` for every ``file.py::test`` a document cites; a bare ``::test`` on the
    same line names another test of the file cited before it."""
    for line in prose(path).splitlines():
        current = None
        for file, name in re.findall(r"`((?:tests/)?[\w/]+\.py)?::(\w+)", line):
            current = (file[len("tests/"):] if file.startswith("tests/") else file) or current
            if current is None:
                raise AssertionError(f"{path}: ::{name} names no file: {line}")
            yield current, name


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: os.path.relpath(p, REPO))
def test_every_cited_test_exists(path):
    missing = []
    for file, name in cited_tests(path):
        source = os.path.join(REPO, "tests", file)
        if not os.path.exists(source) or not re.search(rf"^def {name}\(", open(source).read(), re.M):
            missing.append(f"{file}::{name}")
    assert missing == []


def test_cited_tests_are_read_with_their_file(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("| a | `tools/test_a.py::test_one`, `::test_two` | `tests/test_b.py::test_three` |\n")
    assert list(cited_tests(str(page))) == [("tools/test_a.py", "test_one"), ("tools/test_a.py", "test_two"),
                                            ("test_b.py", "test_three")]
