"""What the prose of the docs states agrees with its own tables and with the programs it runs.

Figures quoted in sentences must be those of the measured table beside them, and
every command line shown for a rate-limited run must be one the program accepts.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from types import ModuleType

import pytest

from monica_async._text import parse_rate

ROOT = Path(__file__).resolve().parent.parent
PAGES = (*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md")
BATCH_SCRIPT = ROOT / "examples" / "progress_batch.py"
#: ``--rate VALUE`` where VALUE is a rate (an error message's ``--rate must ...`` is not).
_RATE = re.compile(r"--rate[ =](\d[\w./]*)")


def _column(table: str, contender: str, concurrency: str, column: str) -> float:
    """The figure of *column* in the row of *contender* at *concurrency* of a text table."""
    lines = table.splitlines()
    header = next(line for line in lines if line.startswith("contender"))
    names = re.split(r"\s{2,}", header.strip())
    for line in lines:
        cells = re.split(r"\s{2,}", line.strip())
        if cells[:2] == [contender, concurrency]:
            return float(cells[names.index(column)].replace(",", ""))
    raise AssertionError(f"no row {contender!r} at {concurrency} in the table")


def test_the_baseline_cpu_quoted_is_the_tables() -> None:
    """benchmarks.md's sentence on the raw-aiohttp baseline's CPU quotes its own table
    (least CPU in ms per 1,000 requests is µs per request), rounded."""
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    said = re.search(r"baseline itself costs only about ([\d.]+) µs of client CPU", page)
    assert said is not None, "the sentence on the baseline's CPU is gone"
    measured = _column(page, "aiohttp workers", "16", "least CPU ms/1k")
    assert round(measured) == float(said[1])


RATES = [
    pytest.param(value, id=f"{page.name}:{value}")
    for page in PAGES
    for value in _RATE.findall(page.read_text(encoding="utf-8"))
]


@pytest.mark.parametrize("value", RATES)
def test_every_rate_in_the_docs_is_written_as_the_command_line_reads_it(value: str) -> None:
    """A ``--rate`` shown anywhere (the command line's, the batch script's) is one
    ``monica-upscale run --rate`` accepts: one syntax for both."""
    requests, per = parse_rate(value)
    assert requests >= 1
    assert per > 0


def _batch_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("progress_batch", BATCH_SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_batch_script_commands_shown_are_ones_it_accepts() -> None:
    """Each ``python examples/progress_batch.py ...`` line of the docs (and of the
    script's own docstring) parses with the script's options, its rate included."""
    script = _batch_script()
    texts = [page.read_text(encoding="utf-8") for page in PAGES]
    texts.append(BATCH_SCRIPT.read_text(encoding="utf-8"))
    commands = [
        shlex.split(line.split("examples/progress_batch.py", 1)[1])
        for text in texts
        for line in text.splitlines()
        if "python examples/progress_batch.py" in line
    ]
    assert len(commands) >= 2
    for args in commands:
        parsed = script.build_parser().parse_args(args)
        assert parsed.rate is None or parsed.rate.per == 60.0
