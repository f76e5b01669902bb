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

from monica_async.cli._demo import plan_pictures

#: The tags the gallery is made of; any other tag would be unescaped text from a message.
GALLERY_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "code", "a",
    "section", "dl", "div", "dt", "dd", "ul", "li", "span", "table", "tr", "th", "td", "img",
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


@attrs.define
class _Picture:
    """An ``<img>`` of the gallery and the link around it."""

    kind: str
    src: str
    width: int
    height: int
    href: str | None


@attrs.define
class _Row:
    """A row of the gallery's tables."""

    kind: str
    line: int
    pictures: list[_Picture] = attrs.Factory(list)
    facts: dict[str, str] = attrs.Factory(dict)


class _Gallery(HTMLParser):
    """The parts of ``index.html`` the tests look at."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.rows: list[_Row] = []
        self.figures: dict[str, str] = {}
        self.links: list[str] = []
        self._href: str | None = None
        self._text_for: tuple[dict[str, str], str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        found = {name: value or "" for name, value in attrs}
        if tag == "tr" and "data-line" in found:
            self.rows.append(_Row(found["class"], int(found["data-line"])))
        elif tag == "a":
            self._href = found["href"]
            self.links.append(found["href"])
        elif tag == "img":
            picture = _Picture(
                found["class"], found["src"], int(found["width"]), int(found["height"]), self._href
            )
            self.rows[-1].pictures.append(picture)
        elif tag == "dd":
            self._text_for = (self.figures, found["id"].removeprefix("figure-"))
        elif tag == "li" and found.get("class") and self.rows:
            self._text_for = (self.rows[-1].facts, found["class"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._href = None
        elif tag in ("dd", "li"):
            self._text_for = None

    def handle_data(self, data: str) -> None:
        if self._text_for is not None:
            target, key = self._text_for
            target[key] = target.get(key, "") + data


def _gallery(demo: Demo) -> _Gallery:
    parser = _Gallery()
    parser.feed((demo.folder / "index.html").read_text("utf-8"))
    return parser


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as picture:
        return picture.size


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_succeeds_as_designed(demo: Demo) -> None:
    """The demo exits 0 and says that its failures were meant to happen."""
    assert (0, True, "") == (demo.code, "went as designed" in demo.err, demo.out), demo.err


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
        "failed by type: BadRequestError 4" in demo.err,
        "retries: 0," not in demo.err,
    ), demo.err


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_gallery_escapes_messages(demo: Demo) -> None:
    """index.html is made of the gallery's own tags only: every message is escaped."""
    assert set() == set(_gallery(demo).tags) - GALLERY_TAGS


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_gallery_summary_gives_what_happened(demo: Demo) -> None:
    """The top of the page gives successes, failures, retries, 429s, wall time and rate."""
    records = _records(demo.folder)
    figures = _gallery(demo).figures
    expected = {
        "succeeded": str(sum(r["ok"] for r in records)),
        "failed": str(sum(not r["ok"] for r in records)),
        "retries": str(sum(r["attempts"] - 1 for r in records if r["attempts"] > 1)),
        "rate-limited": str(sum("HTTP_429" in p.faults for p in plan_pictures(8, 7))),
        "wall-time": True,
        "rate": True,
    }
    actual = {
        **{key: figures[key] for key in ("succeeded", "failed", "retries", "rate-limited")},
        "wall-time": figures["wall-time"].endswith("s"),
        "rate": "inputs/s" in figures["rate"],
    }
    assert expected == actual


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_gallery_gives_the_reasons_of_the_failures(demo: Demo) -> None:
    """The summary names every failure's error code, with its message."""
    page = (demo.folder / "index.html").read_text("utf-8")
    summary = page[page.index('id="summary"') : page.index('id="failed"')]
    codes = {r["error"]["code"] for r in _records(demo.folder) if not r["ok"]}
    assert {"image_too_large", "invalid_image", "image_download_failed"} == {
        code for code in codes if f"<code>{code}</code>" in summary
    }


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_gallery_shows_the_failures_first(demo: Demo) -> None:
    """Every failed input comes before every upscaled one, one row per input."""
    rows = _gallery(demo).rows
    records = _records(demo.folder)
    failed = sorted(r["line"] for r in records if not r["ok"])
    upscaled = sorted(r["line"] for r in records if r["ok"])
    kinds = [row.kind for row in rows]
    assert (["failed"] * len(failed) + ["upscaled"] * len(upscaled), failed, upscaled) == (
        kinds,
        sorted(row.line for row in rows if row.kind == "failed"),
        sorted(row.line for row in rows if row.kind == "upscaled"),
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_gallery_links_each_picture_to_its_full_size_file(demo: Demo) -> None:
    """Each picture is a link to the very file it shows, which exists, at full size."""
    records = {r["line"]: r for r in _records(demo.folder)}
    rows = [row for row in _gallery(demo).rows if row.kind == "upscaled"]
    expected = [(f"upscaled/{Path(records[row.line]['path']).name}", True, True) for row in rows]
    actual = []
    for row in rows:
        original, result = row.pictures
        actual.append(
            (
                result.href,
                original.href == original.src and result.href == result.src,
                all((demo.folder / p.src).is_file() for p in row.pictures),
            )
        )
    assert expected == actual


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_gallery_draws_original_and_result_at_the_same_scale(demo: Demo) -> None:
    """An original and its result are drawn at one scale: the 2x result shows 2x as large."""
    rows = [row for row in _gallery(demo).rows if row.kind == "upscaled"]
    expected, actual = [], []
    for row in rows:
        original, result = row.pictures
        natural = _size(demo.folder / original.src)
        upscaled = _size(demo.folder / result.src)
        # Same scale: drawn / natural is equal for both, so cross products are equal.
        expected.append((True, (2 * original.width, 2 * original.height)))
        actual.append(
            (
                result.width * natural[0] == original.width * upscaled[0]
                and result.height * natural[1] == original.height * upscaled[1],
                (result.width, result.height),
            )
        )
    assert (4, expected) == (len(rows), actual)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_gallery_rows_give_size_attempts_and_time(demo: Demo) -> None:
    """Each row says the picture's size, the attempts made and the time taken."""
    records = {r["line"]: r for r in _records(demo.folder)}
    rows = _gallery(demo).rows
    expected = [(True, True, True) for _ in rows]
    actual = [
        (
            bool(row.facts.get("size")),
            row.facts.get("attempts", "").startswith(f"{records[row.line]['attempts']} attempt"),
            row.facts.get("time", "").endswith(" s"),
        )
        for row in rows
    ]
    assert expected == actual


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_demo_messages_show_no_python_object_repr(demo: Demo) -> None:
    """No error message of the fake server or the client shows a Python object's repr."""
    messages = [r["error"]["message"] for r in _records(demo.folder) if not r["ok"]]
    assert (4, []) == (len(messages), [m for m in messages if " object at 0x" in m])


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_demo_runs_again_in_the_same_folder(tmp_path: Path) -> None:
    """A second demo in the same folder replaces the first one's results."""
    first = await _demo(tmp_path, "--count", "6")
    second = await _demo(tmp_path, "--count", "6")
    assert (0, 0, 6) == (first.code, second.code, len(_records(second.folder)))


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_demo_shows_the_balance_running_out_then_resumes(tmp_path: Path) -> None:
    """With --quota, the run stops on the spent balance, then the demo tops up and resumes."""
    demo = await _demo(tmp_path, "--count", "7", "--quota", "1")
    latest = {r["line"]: r for r in _records(demo.folder)}
    assert (0, True, True, 3) == (
        demo.code,
        "the balance of this API key is exhausted" in demo.err,
        "tops the fake balance up and resumes" in demo.err,
        sum(r["ok"] for r in latest.values()),
    ), demo.err


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_demo_plays_the_documented_limits(tmp_path: Path) -> None:
    """With --documented-limits, the server plays Monica's limits and the demo still works."""
    demo = await _demo(tmp_path, "--count", "6", "--documented-limits")
    assert (0, True) == (demo.code, "10 requests per 12 s, 8 in flight" in demo.err), demo.err
