"""monica-upscale's building blocks: option parsers, input formats, results file, names."""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path

import pytest

from monica_async.cli._inputs import (
    MAX_LINE_BYTES,
    SOURCE_EXCERPT,
    InputRecord,
    count_inputs,
    open_input,
    stream_inputs,
)
from monica_async.cli._options import InputFormat, RateSpec, ShardSpec, UsageError
from monica_async.cli._output import ResultLog, download_name, input_key, read_done
from monica_async.cli._progress import format_seconds

# -- --rate and --shard ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60/min", RateSpec(60, 60.0)),
        ("5/s", RateSpec(5, 1.0)),
        ("5/sec", RateSpec(5, 1.0)),
        ("1000/h", RateSpec(1000, 3600.0)),
        ("10/10s", RateSpec(10, 10.0)),
        ("100/1.5min", RateSpec(100, 90.0)),
        (" 3 / 2 minutes ", RateSpec(3, 120.0)),
    ],
)
def test_rate_spec_parses_requests_per_window(text: str, expected: RateSpec) -> None:
    """--rate accepts N/unit and N/<number><unit>."""
    assert expected == RateSpec.parse(text)


@pytest.mark.parametrize("text", ["", "60", "60/", "x/min", "60/fortnight", "0/s", "5/0s", "-1/s"])
def test_rate_spec_rejects_other_text(text: str) -> None:
    """A malformed --rate is a usage error that shows the accepted forms."""
    with pytest.raises(UsageError, match="60/min"):
        RateSpec.parse(text)


@pytest.mark.parametrize(("text", "expected"), [("0/1", ShardSpec(0, 1)), ("2/3", ShardSpec(2, 3))])
def test_shard_spec_parses_k_over_n(text: str, expected: ShardSpec) -> None:
    """--shard K/N gives shard K of N."""
    assert expected == ShardSpec.parse(text)


@pytest.mark.parametrize("text", ["3/3", "4/3", "-1/3", "1/0", "1", "a/b", "1/2/3"])
def test_shard_spec_rejects_out_of_range_or_malformed(text: str) -> None:
    """K must satisfy 0 <= K < N; anything else is a usage error."""
    with pytest.raises(UsageError, match="K/N"):
        ShardSpec.parse(text)


def test_shards_partition_line_numbers() -> None:
    """Every line number belongs to exactly one of N shards."""
    shards = [ShardSpec(k, 3) for k in range(3)]
    expected = [1] * 30
    assert expected == [sum(s.takes(line) for s in shards) for line in range(1, 31)]


# -- input formats --------------------------------------------------------------------


def _records(data: bytes, fmt: InputFormat = InputFormat.AUTO) -> list[InputRecord]:
    """Read *data* as stdin, in *fmt* (detected from the content by default)."""
    source = open_input("-", fmt, stdin=io.BytesIO(data))
    return list(source.records())


def _pairs(records: list[InputRecord]) -> list[tuple[int, str | None]]:
    return [(r.line, r.url) for r in records]


def test_text_input_skips_blank_lines_and_comments_and_numbers_physical_lines() -> None:
    """Blank lines and # comments are skipped but still counted in line numbers."""
    data = b"# header\nhttp://a/1.png\n\n  http://a/2.png  \n# c\nhttp://a/3.png"
    expected = [(2, "http://a/1.png"), (4, "http://a/2.png"), (6, "http://a/3.png")]
    assert expected == _pairs(_records(data))


def test_text_input_tolerates_crlf_and_a_byte_order_mark() -> None:
    """Windows line endings and a UTF-8 BOM do not end up in the URLs."""
    data = b"\xef\xbb\xbfhttp://a/1.png\r\nhttp://a/2.png\r\n"
    expected = [(1, "http://a/1.png"), (2, "http://a/2.png")]
    assert expected == _pairs(_records(data))


def test_csv_input_reads_the_url_column_by_header() -> None:
    """A CSV with a url column (any position, any case) is read by that column."""
    data = b"id,URL,title\n1,http://a/1.png,one\n\n2,http://a/2.png,two\n"
    expected = [(2, "http://a/1.png"), (4, "http://a/2.png")]
    assert expected == _pairs(_records(data))


def test_csv_comment_lines_before_the_header_are_skipped() -> None:
    """# lines before a CSV header are comments, as format detection assumes."""
    data = b"# exported today\nurl,id\nhttp://a/1.png,1\n"
    assert [(3, "http://a/1.png")] == _pairs(_records(data))


def _outcomes(records: list[InputRecord]) -> list[tuple[int, str | None, str | None]]:
    return [(r.line, r.url, r.problem) for r in records]


OPEN_QUOTE = "a quoted field is still open at the end of the line (a record is one line)"


def test_csv_stray_quote_fails_its_line_and_the_next_lines_are_read_on_their_own() -> None:
    """A quote left open never glues the following lines into one URL."""
    data = b'url\n"http://h/a.png\nhttp://h/b.png\nhttp://h/c.png\n'
    expected = [(2, None, OPEN_QUOTE), (3, "http://h/b.png", None), (4, "http://h/c.png", None)]
    assert expected == _outcomes(_records(data, InputFormat.CSV))


def test_csv_quoted_field_never_spans_lines() -> None:
    """A quoted line break in another column is an error for its line, numbers unshifted."""
    data = b'url,note\nhttp://a/1.png,"two\nlines"\nhttp://a/2.png,x\n'
    records = _records(data, InputFormat.CSV)
    assert [(2, None, OPEN_QUOTE), (4, "http://a/2.png", None)] == [
        (r.line, r.url, r.problem) for r in records if r.line != 3
    ]


def test_csv_quoted_commas_and_doubled_quotes_still_work() -> None:
    """Quoting within one line is read as CSV always was."""
    data = b'note,url\n"a, b ""c""",http://a/1.png\n'
    assert [(2, "http://a/1.png", None)] == _outcomes(_records(data, InputFormat.CSV))


def test_csv_field_over_the_csv_limit_fails_its_line_only() -> None:
    """A field longer than the csv module's limit is an error for that line alone."""
    data = b"url,note\nhttp://a/1.png," + b"x" * 200_000 + b"\nhttp://a/2.png,y\n"
    records = _records(data, InputFormat.CSV)
    assert [(2, None, True), (3, "http://a/2.png", False)] == [
        (r.line, r.url, r.problem is not None and "field limit" in r.problem) for r in records
    ]


def test_csv_carriage_return_inside_a_line_fails_that_line() -> None:
    """A lone CR inside a line is a CSV error for that line, not for the run."""
    data = b"url\nhttp://a/1.png\rjunk\nhttp://a/2.png\n"
    records = _records(data, InputFormat.CSV)
    assert [(2, None), (3, "http://a/2.png")] == _pairs(records)


def test_jsonl_nested_too_deeply_fails_its_line_only() -> None:
    """2,000 opening brackets are too deep to parse: an error for that line alone."""
    data = b"[" * 2000 + b'\n{"url": "http://a/2.png"}\n'
    expected = [(1, None, "the line's JSON is nested too deeply"), (2, "http://a/2.png", None)]
    assert expected == _outcomes(_records(data, InputFormat.JSONL))


@pytest.mark.parametrize("fmt", [InputFormat.TXT, InputFormat.JSONL, InputFormat.CSV])
def test_line_over_the_length_limit_fails_its_line_only(fmt: InputFormat) -> None:
    """A line over MAX_LINE_BYTES is reported by its number and skipped, not held whole."""
    header = b"url\n" if fmt is InputFormat.CSV else b""
    long_line = b"http://a/" + b"x" * MAX_LINE_BYTES
    after = b'{"url": "http://a/2.png"}' if fmt is InputFormat.JSONL else b"http://a/2.png"
    records = _records(header + long_line + b"\n" + after + b"\n", fmt)
    first = 2 if header else 1
    assert [
        (first, None, "the line is longer than 1024 KiB", SOURCE_EXCERPT),
        (first + 1, "http://a/2.png", None, len("http://a/2.png")),
    ] == [(r.line, r.url, r.problem, len(r.source)) for r in records]


def test_line_exactly_at_the_length_limit_is_read() -> None:
    """The limit counts the line without its line break."""
    url = "http://a/" + "x" * (MAX_LINE_BYTES - 9)
    [record] = _records(url.encode() + b"\n", InputFormat.TXT)
    assert (1, url) == (record.line, record.url)


def test_csv_without_url_column_is_a_usage_error(tmp_path: Path) -> None:
    """A .csv file whose header has no url column is refused before anything is sent."""
    path = tmp_path / "in.csv"
    path.write_text("id,link\n1,http://a/1.png\n")
    with pytest.raises(UsageError, match="no 'url' column"):
        open_input(str(path), stdin=io.BytesIO())


def test_csv_comment_that_is_no_csv_before_the_header_is_skipped() -> None:
    """A "#" line before the header is a comment even when it would not parse as CSV."""
    data = b'# the "export\nurl\nhttp://a/1.png\n'
    assert [(3, "http://a/1.png", None)] == _outcomes(_records(data, InputFormat.CSV))


def test_csv_header_with_an_open_quote_is_a_usage_error(tmp_path: Path) -> None:
    """A .csv file whose header cannot be read is refused, saying why, not with a traceback."""
    path = tmp_path / "in.csv"
    path.write_text('"url,id\nhttp://a/1.png,1\n')
    with pytest.raises(UsageError, match="header cannot be read: a quoted field is still open"):
        open_input(str(path), stdin=io.BytesIO())


def test_first_line_that_is_no_csv_is_sniffed_as_text() -> None:
    """Format detection survives a first line the csv module refuses."""
    source = open_input("-", stdin=io.BytesIO(b"url," + b"x" * 200_000 + b"\n"))
    assert InputFormat.TXT == source.format


def test_csv_row_without_url_is_an_input_problem() -> None:
    """A row with an empty url cell becomes a problem record, not a request."""
    records = _records(b"url,id\n,1\n", InputFormat.CSV)
    expected = [(2, None, "the row has no value in its url column")]
    assert expected == [(r.line, r.url, r.problem) for r in records]


def test_jsonl_input_reads_the_url_field() -> None:
    """JSON Lines are read by their "url" field; other fields are ignored."""
    data = b'{"url": "http://a/1.png", "id": 1}\n\n{"id": 2, "url": "http://a/2.png"}\n'
    expected = [(1, "http://a/1.png"), (3, "http://a/2.png")]
    assert expected == _pairs(_records(data))


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"{not json", "the line is not valid JSON"),
        (b'{"link": "http://a/1.png"}', 'the line has no "url" string field'),
        (b'{"url": 5}', 'the line has no "url" string field'),
        (b"[1, 2]", 'the line has no "url" string field'),
    ],
)
def test_jsonl_bad_line_is_an_input_problem(line: bytes, problem: str) -> None:
    """A JSON line without a usable url becomes a problem record with its own line number."""
    records = _records(b'{"url": "http://a/1.png"}\n' + line + b"\n", InputFormat.JSONL)
    assert [(2, None, problem)] == [(r.line, r.url, r.problem) for r in records[1:]]


def test_invalid_utf8_is_an_input_problem() -> None:
    """Bytes that are not UTF-8 make a problem record instead of a mangled URL."""
    records = _records(b"http://a/\xff.png\n")
    assert [(1, None, "the line is not valid UTF-8")] == [
        (r.line, r.url, r.problem) for r in records
    ]


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("in.txt", b"http://a/1.png\n", InputFormat.TXT),
        ("in.csv", b"url\nhttp://a/1.png\n", InputFormat.CSV),
        ("in.jsonl", b'{"url": "http://a/1.png"}\n', InputFormat.JSONL),
        ("in.ndjson", b'{"url": "http://a/1.png"}\n', InputFormat.JSONL),
        ("urls", b"http://a/1.png\n", InputFormat.TXT),
        ("urls", b'# c\n{"url": "http://a/1.png"}\n', InputFormat.JSONL),
        ("urls", b"name,url\nx,http://a/1.png\n", InputFormat.CSV),
        ("-", b'{"url": "http://a/1.png"}\n', InputFormat.JSONL),
        ("-", b"", InputFormat.TXT),
    ],
)
def test_format_is_detected_by_extension_then_content(
    tmp_path: Path, name: str, data: bytes, expected: InputFormat
) -> None:
    """The extension decides; without a known one, the first meaningful line does."""
    if name != "-":
        (tmp_path / name).write_bytes(data)
        name = str(tmp_path / name)
    source = open_input(name, stdin=io.BytesIO(data))
    source.close()
    assert expected == source.format


def test_missing_input_file_is_a_usage_error(tmp_path: Path) -> None:
    """An input that cannot be opened is a usage error naming it."""
    with pytest.raises(UsageError, match="cannot read input"):
        open_input(str(tmp_path / "absent.txt"), stdin=io.BytesIO())


def test_count_inputs_applies_the_same_filter(tmp_path: Path) -> None:
    """The count for the ETA sees the inputs the run will take, no more."""
    path = tmp_path / "in.txt"
    path.write_text("".join(f"http://a/{i}.png\n# c\n" for i in range(10)))
    shard = ShardSpec(1, 4)  # URLs are on the odd lines 1..19; 1, 5, 9, 13, 17 qualify
    expected = 5
    assert expected == count_inputs(str(path), InputFormat.TXT, 0, lambda r: shard.takes(r.line))


async def test_stream_inputs_yields_every_kept_record_beyond_one_chunk(tmp_path: Path) -> None:
    """Records come through the reader thread in order, across chunk boundaries."""
    path = tmp_path / "in.txt"
    path.write_text("".join(f"http://a/{i}.png\n" for i in range(1000)))
    source = open_input(str(path), stdin=io.BytesIO())
    got = [r.line async for r in stream_inputs(source, lambda r: r.line % 2 == 0, asyncio.Event())]
    source.close()
    assert list(range(2, 1001, 2)) == got


async def test_stream_inputs_ends_when_stop_is_set(tmp_path: Path) -> None:
    """Setting the stop event ends the stream without reading the rest."""
    path = tmp_path / "in.txt"
    path.write_text("".join(f"http://a/{i}.png\n" for i in range(5000)))
    source = open_input(str(path), stdin=io.BytesIO())
    stop = asyncio.Event()
    got = []
    async for record in stream_inputs(source, lambda r: True, stop):
        got.append(record.line)
        if len(got) == 10:
            stop.set()
    source.close()
    assert list(range(1, 11)) == got


# -- results file ---------------------------------------------------------------------


def _record(line: int, source: str, ok: bool) -> dict[str, object]:
    return {"line": line, "source": source, "ok": ok}


def test_read_done_keeps_the_latest_record_of_each_input(tmp_path: Path) -> None:
    """An input counts as done when its latest record is a success."""
    path = tmp_path / "out.jsonl"
    lines = [
        _record(1, "http://a/1.png", False),
        _record(1, "http://a/1.png", True),
        _record(2, "http://a/2.png", True),
        _record(2, "http://a/2.png", False),
        _record(3, "http://a/3.png", False),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    expected = {input_key(1, "http://a/1.png")}
    assert expected == read_done(path).done


def test_read_done_ignores_a_torn_last_line(tmp_path: Path) -> None:
    """A line cut short by a killed process is counted as unreadable, not as a record."""
    path = tmp_path / "out.jsonl"
    path.write_text(json.dumps(_record(1, "http://a/1.png", True)) + '\n{"line": 2, "sou')
    state = read_done(path)
    assert (1, 1, {input_key(1, "http://a/1.png")}) == (
        state.records,
        state.unreadable,
        state.done,
    )


def test_read_done_of_a_missing_file_is_empty(tmp_path: Path) -> None:
    """Resuming into a file that does not exist yet starts from nothing."""
    assert set() == read_done(tmp_path / "absent.jsonl").done


def test_input_key_depends_on_line_and_source() -> None:
    """The same URL on another line, or another URL on the same line, is another input."""
    keys = {input_key(1, "http://a/1.png"), input_key(2, "http://a/1.png")}
    keys.add(input_key(1, "http://a/2.png"))
    assert 3 == len(keys)


def test_result_log_terminates_a_torn_line_before_appending(tmp_path: Path) -> None:
    """Appending after a torn line first ends it, so the new record is a line of its own."""
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"line": 1, "source": "x", "ok": true}\n{"line": 2, "so')
    log = ResultLog(path)
    log.write({"line": 3, "source": "y", "ok": True})
    log.close()
    expected = [b'{"line": 1, "source": "x", "ok": true}', b'{"line": 2, "so']
    expected.append(b'{"line":3,"source":"y","ok":true}')
    assert expected == path.read_bytes().splitlines()


def test_result_log_writes_one_complete_line_per_record(tmp_path: Path) -> None:
    """Each record is one line of JSON, readable as soon as it is written."""
    path = tmp_path / "out.jsonl"
    log = ResultLog(path)
    log.write({"line": 1, "source": "http://a/é.png", "ok": True})
    written = path.read_text(encoding="utf-8")
    log.close()
    assert '{"line":1,"source":"http://a/é.png","ok":true}\n' == written


# -- download names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "http://h/../../etc/passwd",
        "http://h/a/..%2F..%2Fsecret.png",
        "http://h/%2e%2e",
        "http://h/",
        "http://h/dir/.hidden.png",
        "http://h/x.png?name=../../y",
        "http://h/" + "a" * 500 + ".png",
        "http://h/na%00me.png",
    ],
)
def test_download_name_is_a_plain_file_name(source: str) -> None:
    """No source URL can put a path separator, a parent reference or a dot-file in a name."""
    name = download_name(7, source, "http://r/result.png")
    assert (True, False, False) == (
        name.startswith("7-") and name.endswith(".png") and len(name) < 100,
        "/" in name or "\\" in name or "\x00" in name,
        name.startswith("."),
    )


def test_download_names_differ_for_same_basename() -> None:
    """Two inputs with the same basename get different files."""
    first = download_name(1, "http://a/x/cat.png", "http://r/1.png")
    second = download_name(2, "http://b/y/cat.png", "http://r/2.png")
    assert first != second


def test_download_name_keeps_a_readable_stem_and_result_extension() -> None:
    """The name shows the line, the source's basename and the result's extension."""
    name = download_name(12, "http://h/photos/My%20Cat.jpeg", "http://r/out.webp")
    assert re.fullmatch(r"12-My_Cat-[0-9a-f]{8}\.webp", name) is not None, name


@pytest.mark.parametrize(("seconds", "expected"), [(3.21, "3.2s"), (65, "1m05s"), (3725, "1h02m")])
def test_format_seconds(seconds: float, expected: str) -> None:
    """Durations read as seconds, minutes or hours."""
    assert expected == format_seconds(seconds)
