"""Every Python code block of the documentation runs, against the fake Monica server.

The pages are docs/*.md and README.md. A fenced block whose language is ``python``
is one of:

- a complete program: it is written to a file and run with this interpreter, in an
  empty directory, with ``MONICA_API_KEY`` and ``MONICA_BASE_URL`` pointing at a
  :class:`FakeMonicaServer` (``process_images=False``: any image URL is accepted and
  the result is a small PNG served by the fake). It must exit with status 0;
- a pytest module, when the line before the block is ``<!-- run: pytest -->``: it is
  run by pytest, warnings as errors, with the pytest configuration that its page
  suggests (the page's ``toml`` block with ``[tool.pytest.ini_options]``), and must pass;
- a file of the repository shown with ``--8<-- "examples/x.py"`` (pymdownx.snippets):
  the page shows the file itself, which tests/test_examples.py runs;
- not run, when the line before it is ``<!-- not-run: <reason> -->``. Keep these rare.

Console, text and other blocks are not Python and are not run.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest

from monica_async.testing import FakeMonicaServer

ROOT = Path(__file__).resolve().parent.parent
PAGES = (*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md")
KEY = "docs-test-key"
#: Seconds one block may run.
BLOCK_TIMEOUT = 45.0

PYTHON = frozenset({"python", "py", "python3"})
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`]*?)[ \t]*$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>not-run|run)\s*:\s*(?P<value>.*?)\s*-->\s*$")
_SNIPPET = re.compile(r'^\s*-{1,}8<-{1,}\s+"(?P<path>[^"]+)"\s*$')


@attrs.frozen
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    language: str
    code: str
    marker: tuple[str, str] | None

    @property
    def name(self) -> str:
        """``page.md:line``, the block's id in test reports."""
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def extract_blocks(page: Path) -> Iterator[Block]:
    """Yield the fenced code blocks of a Markdown *page*, with the marker before each."""
    lines = page.read_text(encoding="utf-8").splitlines()
    previous = ""
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            if lines[i].strip():
                previous = lines[i]
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        language = opening["info"].split()[0].lstrip(".").lower() if opening["info"] else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines):
            closing = _FENCE.match(lines[j])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"]
            ):
                break
            # Inside a list item the fence is indented; so is its content, by as much.
            text = lines[j]
            body.append(text[indent:] if text[:indent].strip() == "" else text.lstrip())
            j += 1
        marker = _MARKER.match(previous)
        yield Block(
            page=page,
            line=i + 1,
            language=language,
            code="\n".join(body) + "\n",
            marker=(marker["kind"], marker["value"]) if marker else None,
        )
        previous = ""
        i = j + 1


def snippet_paths(block: Block) -> list[str] | None:
    """The files a block only includes (``--8<-- "path"`` lines), else ``None``."""
    lines = [line for line in block.code.splitlines() if line.strip()]
    matches = [_SNIPPET.match(line) for line in lines]
    if not lines or not all(matches):
        return None
    return [match["path"] for match in matches if match is not None]


ALL_BLOCKS = [block for page in PAGES if page.exists() for block in extract_blocks(page)]
PYTHON_BLOCKS = [block for block in ALL_BLOCKS if block.language in PYTHON]
RUN_BLOCKS = [
    block
    for block in PYTHON_BLOCKS
    if snippet_paths(block) is None and (block.marker is None or block.marker[0] == "run")
]
PYTEST_BLOCKS = [block for block in RUN_BLOCKS if block.marker == ("run", "pytest")]
PROGRAM_BLOCKS = [block for block in RUN_BLOCKS if block.marker is None]
SNIPPET_BLOCKS = [block for block in PYTHON_BLOCKS if snippet_paths(block) is not None]


def _ids(blocks: list[Block]) -> list[str]:
    return [block.name for block in blocks]


@pytest.fixture
async def docs_server() -> AsyncIterator[FakeMonicaServer]:
    """The fake Monica server the documentation's programs talk to."""
    async with FakeMonicaServer(api_key=KEY, process_images=False) as server:
        yield server


def _environment(server: FakeMonicaServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONICA_", "PYTEST_"))}
    env["MONICA_API_KEY"] = KEY
    env["MONICA_BASE_URL"] = server.base_url
    return env


async def _run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), BLOCK_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        pytest.fail(f"still running after {BLOCK_TIMEOUT} s")
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


def _failure(block: Block, code: int, output: str) -> str:
    return (
        f"the Python block at {block.name} failed (exit status {code}).\n"
        "Make it a complete program (imports, asyncio.run(main())), or put "
        "'<!-- not-run: <reason> -->' on the line before it.\n"
        f"--- block ---\n{block.code}--- output ---\n{output}"
    )


@pytest.mark.parametrize("block", PROGRAM_BLOCKS, ids=_ids(PROGRAM_BLOCKS))
async def test_program_block_runs(
    block: Block, docs_server: FakeMonicaServer, tmp_path: Path
) -> None:
    """The block runs as a program against the fake server and exits with status 0."""
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")

    code, output = await _run([sys.executable, str(script)], tmp_path, _environment(docs_server))

    assert 0 == code, _failure(block, code, output)


def suggested_pytest_config(page: Path) -> str:
    """The pytest configuration *page* suggests (its TOML block with pytest's table),
    else the one the testing page suggests to every user."""
    for candidate in (page, ROOT / "docs" / "testing.md"):
        for block in extract_blocks(candidate):
            if block.language == "toml" and "[tool.pytest.ini_options]" in block.code:
                return block.code
    raise AssertionError(f"{page.relative_to(ROOT)} suggests no pytest configuration")


@pytest.mark.parametrize("block", PYTEST_BLOCKS, ids=_ids(PYTEST_BLOCKS))
async def test_pytest_block_passes(
    block: Block, docs_server: FakeMonicaServer, tmp_path: Path
) -> None:
    """The block, a pytest module, passes under ``-W error`` with its page's configuration."""
    (tmp_path / "test_block.py").write_text(block.code, encoding="utf-8")
    (tmp_path / "pyproject.toml").write_text(suggested_pytest_config(block.page), "utf-8")
    args = [
        *(sys.executable, "-m", "pytest", "test_block.py", "-q", "-p", "no:cacheprovider"),
        *("-W", "error"),
    ]

    code, output = await _run(args, tmp_path, _environment(docs_server))

    assert 0 == code, _failure(block, code, output)
    assert re.search(r"\b[1-9]\d* passed\b", output), output


@pytest.mark.parametrize("block", SNIPPET_BLOCKS, ids=_ids(SNIPPET_BLOCKS))
def test_snippet_block_shows_a_tested_example(block: Block) -> None:
    """A block that includes a file shows a program of examples/ that a test runs."""
    tested = (ROOT / "tests" / "test_examples.py").read_text(encoding="utf-8")
    for path in snippet_paths(block) or []:
        assert (ROOT / path).is_file(), f"{block.name}: {path} does not exist"
        assert path.startswith("examples/"), f"{block.name}: {path} is not under examples/"
        assert f'"{Path(path).name}"' in tested, f"{block.name}: no test runs {path}"


def test_every_marker_is_known_and_says_why() -> None:
    """Markers are ``run: pytest`` or ``not-run: <reason>``, and stand before a block."""
    for page in PAGES:
        if not page.exists():
            continue
        marked_lines = {block.line for block in extract_blocks(page) if block.marker is not None}
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            marker = _MARKER.match(line)
            if marker is None:
                continue
            where = f"{page.relative_to(ROOT)}:{number}"
            if marker["kind"] == "run":
                assert "pytest" == marker["value"], f"{where}: unknown marker {line.strip()}"
            else:
                assert marker["value"], f"{where}: say why the block is not run"
            following = next(
                (n for n in range(number + 1, len(lines) + 1) if lines[n - 1].strip()), None
            )
            assert following in marked_lines, f"{where}: the marker is not before a code block"


def test_the_docs_have_python_blocks_to_run() -> None:
    """The collection above found the pages' blocks (a broken parser would find none)."""
    assert (ROOT / "docs" / "getting-started.md") in {block.page for block in PROGRAM_BLOCKS}
    assert PYTEST_BLOCKS
    assert SNIPPET_BLOCKS


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("```python\nprint(1)\n```\n", [("python", "print(1)\n", None)]),
        ("~~~~ py title='x'\na\n~~~~\n", [("py", "a\n", None)]),
        ("<!-- not-run: needs the real API -->\n\n```python\nx\n```\n",
         [("python", "x\n", ("not-run", "needs the real API"))]),
        ("- item\n\n    ```python\n    x = 1\n      y\n    ```\n",
         [("python", "x = 1\n  y\n", None)]),
        ("````markdown\n```python\nx\n```\n````\n", [("markdown", "```python\nx\n```\n", None)]),
        ("```console\n$ ls\n```\ntext\n```python\nz\n```\n",
         [("console", "$ ls\n", None), ("python", "z\n", None)]),
    ],
)  # fmt: skip
def test_extract_blocks(
    tmp_path: Path, markdown: str, expected: list[tuple[str, str, object]]
) -> None:
    """Fences of either kind and length, indented fences, info strings and markers."""
    page = tmp_path / "page.md"
    page.write_text(markdown, encoding="utf-8")

    actual = [(block.language, block.code, block.marker) for block in extract_blocks(page)]

    assert expected == actual
