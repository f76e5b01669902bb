"""The storage benchmark in the docs: one run, the same in both pages, as the program printed it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = (ROOT / "docs" / "storage.md", ROOT / "docs" / "benchmarks.md")
_TABLE = re.compile(r"```text\n(## A 4096x4096 result.*?)```", re.DOTALL)


def _table(page: Path) -> str:
    found = _TABLE.findall(page.read_text(encoding="utf-8"))
    assert len(found) == 1, f"{page.name} should show the storage table once"
    return str(found[0])


def _speed(table: str, way: str) -> float:
    for line in table.splitlines():
        if line.startswith(way):
            return float(re.split(r"\s{2,}", line.strip())[1])
    raise AssertionError(f"no row {way!r}")


def test_both_pages_show_the_same_run() -> None:
    """storage.md and benchmarks.md quote one and the same storage table."""
    assert _table(PAGES[0]) == _table(PAGES[1])


def test_the_table_is_what_the_program_prints_for_the_recorded_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The docs' table is bench_storage's rendering of the run kept in results.json."""
    monkeypatch.syspath_prepend(str(ROOT))
    from benchmarks import bench_storage

    recorded = json.loads((ROOT / "benchmarks" / "results" / "results.json").read_text())
    assert bench_storage.table(recorded["results"]["storage"]) == _table(PAGES[0]).rstrip("\n")


@pytest.mark.parametrize("page", PAGES, ids=[page.name for page in PAGES])
def test_the_speed_ratio_quoted_is_the_tables(page: Path) -> None:
    """The sentence that compares streaming into the bucket with a raw put quotes the table."""
    table = _table(page)
    ratio = _speed(table, "client.download(result, 's3://...')") / _speed(
        table, "obstore.put_async(store, key, bytes)"
    )
    text = " ".join(page.read_text(encoding="utf-8").split())
    assert f"{ratio:.2f} of the" in text
