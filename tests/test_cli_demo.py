"""monica-upscale demo, end to end, as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import pytest
from PIL import Image

#: The tags the gallery is made of; any other tag would be unescaped text from a message.
GALLERY_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "p", "code",
    "table", "tr", "th", "td", "img", "div", "br",
}  # fmt: skip


@attrs.frozen
class Demo:
    """A finished demo: status, what it printed, and where it wrote."""

    code: int
    out: str
    err: str
    folder: Path


async def _demo(tmp_path: Path, *args: str) -> Demo:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONICA_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monica_async",
        "demo",
        "--output-dir",
        "demo",
        *args,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 100)
    assert process.returncode is not None
    return Demo(process.returncode, out.decode(), err.decode(), tmp_path / "demo")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """One demo run with 8 pictures, shared by the tests of this module."""
    return asyncio.run(_demo(tmp_path_factory.mktemp("demo"), "--count", "8"))


def _records(folder: Path) -> list[dict[str, Any]]:
    lines = (folder / "results.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_succeeds_as_designed(demo: Demo) -> None:
    """The demo exits 0 and says that its failures were meant to happen."""
    assert (0, True, "") == (demo.code, "went as designed" in demo.out, demo.err), demo.out


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_results_are_exactly_twice_the_input_size(demo: Demo) -> None:
    """Every downloaded result is the input picture at exactly 2x its width and height."""
    pairs = []
    for record in _records(demo.folder):
        if not record["ok"]:
            continue
        name = urlsplit(record["source"]).path.rsplit("/", 1)[-1]
        with Image.open(demo.folder / "inputs" / name) as original:
            width, height = original.size
        with Image.open(Path(demo.folder.parent, record["path"])) as result:
            pairs.append(((2 * width, 2 * height), result.size))
    expected = [want for want, _ in pairs]
    assert (4, expected) == (len(pairs), [got for _, got in pairs])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_shows_failures_and_retries(demo: Demo) -> None:
    """The intended failures fail with 400s, and retries and the summary are shown."""
    failures = sorted(r["error"]["code"] for r in _records(demo.folder) if not r["ok"])
    expected = ["image_download_failed", "image_too_large", "image_too_large", "invalid_image"]
    assert (expected, True, True) == (
        failures,
        "failed by type: BadRequestError 4" in demo.out,
        "retries: 0," not in demo.out,
    ), demo.out


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_gallery_lists_every_input_and_escapes_messages(demo: Demo) -> None:
    """index.html has a row per input, links files that exist, and no unescaped markup."""
    page = (demo.folder / "index.html").read_text("utf-8")
    parser = _Tags()
    parser.feed(page)
    sources = [
        part.split('"', 1)[0] for part in page.split('<img src="')[1:]
    ]  # every image the page shows
    assert (set(), 9, [True] * len(sources), 12) == (
        set(parser.tags) - GALLERY_TAGS,
        parser.tags.count("tr"),
        [(demo.folder / src).is_file() for src in sources],
        len(sources),
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_demo_runs_again_in_the_same_folder(tmp_path: Path) -> None:
    """A second demo in the same folder replaces the first one's results."""
    first = await _demo(tmp_path, "--count", "6")
    second = await _demo(tmp_path, "--count", "6")
    assert (0, 0, 6) == (first.code, second.code, len(_records(second.folder)))
