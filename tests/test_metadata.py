"""The package's metadata: what the package index shows of it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
#: ``[text](target)`` and ``![alt](target)`` links of Markdown, and ``<img src=...>``.
_LINK = re.compile(r"\]\(\s*<?(?P<target>[^)\s>]+)|\bsrc=[\"'](?P<src>[^\"']+)")


@pytest.mark.parametrize("name", ["Homepage", "Documentation", "Issues", "Changelog"])
def test_project_url_is_declared(name: str) -> None:
    """The index links the project's home, docs, issue tracker and changelog."""
    assert PROJECT["urls"][name].startswith("https://")


def test_readme_links_are_absolute() -> None:
    """README.md is the page on the index, where a relative link leads nowhere."""
    readme = (ROOT / "README.md").read_text("utf-8")
    targets = [m["target"] or m["src"] for m in _LINK.finditer(readme)]

    relative = [t for t in targets if not t.startswith(("https://", "http://", "#", "mailto:"))]

    assert targets
    assert [] == relative


def test_readme_is_the_long_description() -> None:
    """The index shows README.md, as Markdown."""
    assert "README.md" == PROJECT["readme"]
