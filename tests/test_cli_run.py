"""monica-upscale run, in process, against the fake Monica server on 127.0.0.1."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web

from monica_async.cli._main import build_parser, run_options
from monica_async.cli._output import download_name
from monica_async.cli._run import execute
from monica_async.testing import FakeMonicaServer, Fault

HINT = "monica-upscale run ... --resume"


@attrs.frozen
class CliResult:
    """What one in-process run printed and wrote."""

    code: int
    out: str
    err: str
    records: list[dict[str, Any]]
    unreadable: int


RunCli = Callable[..., Awaitable[CliResult]]


@pytest.fixture
def run_cli(api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunCli:
    """``await run_cli(*argv)`` parses ``run`` arguments and executes them in this loop."""
    monkeypatch.chdir(tmp_path)

    async def run(*argv: str, output: str = "out.jsonl", **changes: Any) -> CliResult:
        args = build_parser().parse_args(["run", *argv, "--output", output])
        options = attrs.evolve(run_options(args, HINT), **changes)
        out, err = io.StringIO(), io.StringIO()
        code = await execute(options, out=out, err=err)
        path = tmp_path / output
        records = []
        unreadable = 0
        if path.exists():
            for line in path.read_text("utf-8").splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    unreadable += 1
        return CliResult(code, out.getvalue(), err.getvalue(), records, unreadable)

    return run


@pytest.fixture
async def server(api_key: str) -> AsyncIterator[FakeMonicaServer]:
    """A fake server that answers at once with placeholder results (no image work)."""
    async with FakeMonicaServer(api_key=api_key, process_images=False) as fake:
        yield fake


def _urls(server: FakeMonicaServer, count: int) -> list[str]:
    return [f"{server.base_url}/images/input-{i}.png" for i in range(count)]


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _successes(records: list[dict[str, Any]]) -> list[int]:
    return sorted(r["line"] for r in records if r["ok"])


# -- records --------------------------------------------------------------------------


async def test_success_record_has_every_field(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """A success line holds line, source, ok, result, path, attempts, elapsed, id, time."""
    url = _urls(server, 1)[0]
    result = await run_cli(
        _write(tmp_path / "in.txt", ["# one input", url]), "--base-url", server.base_url
    )
    (record,) = result.records
    expected = {
        "line": 2,
        "source": url,
        "ok": True,
        "path": None,
        "attempts": 1,
        "error": None,
        "result_on_server": True,
        "request_id_given": True,
        "elapsed_is_seconds": True,
        "time_is_utc": True,
    }
    actual = {
        **{k: record[k] for k in ("line", "source", "ok", "path", "attempts", "error")},
        "result_on_server": record["result"].startswith(server.base_url + "/results/"),
        "request_id_given": bool(record["request_id"]),
        "elapsed_is_seconds": isinstance(record["elapsed"], float) and record["elapsed"] >= 0,
        "time_is_utc": record["time"].endswith("Z"),
    }
    assert expected == actual


async def test_failure_record_carries_type_status_code_and_message(
    run_cli: RunCli, api_key: str, tmp_path: Path
) -> None:
    """A refused input's line names the error's stage, type, status, code and message."""
    async with FakeMonicaServer(api_key=api_key) as fake:
        url = fake.add_image(b"this is not a picture", name="notes.png")
        result = await run_cli(_write(tmp_path / "in.txt", [url]), "--base-url", fake.base_url)
    (record,) = result.records
    error = record["error"]
    expected = (False, None, "upscale", "BadRequestError", 400, "invalid_image", True)
    assert expected == (
        record["ok"],
        record["result"],
        error["stage"],
        error["type"],
        error["status"],
        error["code"],
        "could not be decoded" in error["message"],
    )


async def test_retried_input_records_its_attempts(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path, no_retry_sleep: None
) -> None:
    """An input that needed retries says how many attempts it took."""
    url = _urls(server, 1)[0]
    server.script_faults(url, [Fault.HTTP_503, Fault.HTTP_502])
    result = await run_cli(_write(tmp_path / "in.txt", [url]), "--base-url", server.base_url)
    assert [(True, 3)] == [(r["ok"], r["attempts"]) for r in result.records]


async def test_unreadable_records_fail_without_a_request(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """Bad JSON lines and non-URLs are recorded as input failures and never sent."""
    url = _urls(server, 1)[0]
    lines = [json.dumps({"url": url}), "{oops", json.dumps({"url": "not a url"})]
    result = await run_cli(_write(tmp_path / "in.jsonl", lines), "--base-url", server.base_url)
    expected = [(1, True, None), (2, False, "input"), (3, False, "input")]
    actual = sorted(
        (r["line"], r["ok"], r["error"] and r["error"]["stage"]) for r in result.records
    )
    assert (expected, 1) == (actual, server.stats.total)


async def test_csv_input_is_read_by_its_url_column(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """A CSV's url column gives the inputs, numbered by their physical line."""
    urls = _urls(server, 2)
    path = _write(tmp_path / "in.csv", ["name,url", f"a,{urls[0]}", f"b,{urls[1]}"])
    result = await run_cli(path, "--base-url", server.base_url)
    assert [(2, urls[0]), (3, urls[1])] == sorted((r["line"], r["source"]) for r in result.records)


# -- exit statuses and output -----------------------------------------------------------


async def test_exit_status_is_0_when_every_input_succeeds(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """All succeeded: exit status 0."""
    result = await run_cli(
        _write(tmp_path / "in.txt", _urls(server, 3)), "--base-url", server.base_url
    )
    assert 0 == result.code


async def test_exit_status_is_1_when_some_input_fails(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """Some failed: exit status 1, and the summary says how to retry only those."""
    urls = _urls(server, 3)
    server.script_faults(urls[1], [Fault.HTTP_500])
    path = _write(tmp_path / "in.txt", urls)
    result = await run_cli(path, "--base-url", server.base_url, "--retries", "0")
    assert (1, True) == (result.code, HINT in result.err)


async def test_summary_counts_failures_by_type(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """The summary gives successes, failures by error type and where the results are."""
    urls = _urls(server, 4)
    server.script_faults(urls[0], [Fault.HTTP_500])
    server.script_faults(urls[1], [Fault.MALFORMED_NO_IMAGE])
    path = _write(tmp_path / "in.txt", urls)
    result = await run_cli(path, "--base-url", server.base_url, "--retries", "0")
    expected = [
        True,
        True,
        True,
        True,
    ]
    assert expected == [
        "2 succeeded, 2 failed" in result.err,
        "InternalServerError 1" in result.err,
        "APIResponseValidationError 1" in result.err,
        "results: out.jsonl" in result.err,
    ]


async def test_existing_output_without_resume_is_refused(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """Results are never appended to a finished run by accident: --resume is required."""
    path = _write(tmp_path / "in.txt", _urls(server, 1))
    (tmp_path / "out.jsonl").write_text('{"line": 1, "source": "x", "ok": true}\n')
    result = await run_cli(path, "--base-url", server.base_url)
    assert (2, 1, 0) == (result.code, len(result.err.splitlines()), server.stats.total)


async def test_refused_key_stops_the_run_with_status_2(run_cli: RunCli, tmp_path: Path) -> None:
    """A 401 is a configuration error: the run stops and says to check the key."""
    async with FakeMonicaServer(api_key="another-key", process_images=False) as fake:
        path = _write(tmp_path / "in.txt", _urls(fake, 50))
        result = await run_cli(path, "--base-url", fake.base_url, "--concurrency", "2")
        sent = fake.stats.total
    assert (2, True, True) == (result.code, "MONICA_API_KEY" in result.err, sent < 50)


async def test_total_is_counted_for_a_regular_file(
    run_cli: RunCli, api_key: str, tmp_path: Path
) -> None:
    """With a regular file as input, progress lines show done/total."""
    async with FakeMonicaServer(api_key=api_key, process_images=False, latency=1.0) as fake:
        path = _write(tmp_path / "in.txt", ["# c", *_urls(fake, 2)])
        result = await run_cli(path, "--base-url", fake.base_url, log_interval=0.0)
    assert "progress: 0/2 done" in result.err


# -- resume -----------------------------------------------------------------------------


async def test_resume_sends_only_what_did_not_succeed(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """After a run with failures, --resume sends only the failed inputs, once each."""
    urls = _urls(server, 6)
    for url in (urls[1], urls[4]):
        server.script_faults(url, [Fault.HTTP_500])
    path = _write(tmp_path / "in.txt", urls)
    first = await run_cli(path, "--base-url", server.base_url, "--retries", "0")
    second = await run_cli(path, "--base-url", server.base_url, "--retries", "0", "--resume")
    attempts = server.stats.attempts_by_image
    expected = (1, 0, [1, 2, 1, 1, 2, 1], [2, 5], list(range(1, 7)))
    assert expected == (
        first.code,
        second.code,
        [attempts[u] for u in urls],
        sorted(r["line"] for r in second.records[len(first.records) :]),
        _successes(second.records),
    )


async def test_resume_with_nothing_left_sends_nothing(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """Resuming a complete run sends no request, writes no line and exits 0."""
    path = _write(tmp_path / "in.txt", _urls(server, 3))
    await run_cli(path, "--base-url", server.base_url)
    second = await run_cli(path, "--base-url", server.base_url, "--resume")
    assert (0, 3, 3, True) == (
        second.code,
        server.stats.total,
        len(second.records),
        "3 skipped (already done)" in second.err,
    )


async def test_resume_resends_an_input_whose_line_changed(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """A success is matched by line and URL: an edited input file is not trusted blindly."""
    urls = _urls(server, 2)
    path = _write(tmp_path / "in.txt", urls)
    await run_cli(path, "--base-url", server.base_url)
    _write(tmp_path / "in.txt", [urls[1], urls[0]])
    await run_cli(path, "--base-url", server.base_url, "--resume")
    assert [2, 2] == [server.stats.attempts_by_image[u] for u in urls]


async def test_resume_after_a_torn_line_appends_whole_lines(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """A torn last line is ignored, its input sent again, and the file stays line-clean."""
    urls = _urls(server, 2)
    path = _write(tmp_path / "in.txt", urls)
    await run_cli(path, "--base-url", server.base_url)
    out = tmp_path / "out.jsonl"
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(lines[0] + lines[1][:25])  # the second record cut mid-line
    torn_line = json.loads(lines[1])["line"]
    await run_cli(path, "--base-url", server.base_url, "--resume")
    final = out.read_bytes().splitlines()
    readable = [json.loads(line) for line in final if line != lines[1][:25]]
    assert ([1, 2], 3, [torn_line]) == (
        _successes(readable),
        len(final),
        [r["line"] for r in readable[1:]],
    )


# -- downloads --------------------------------------------------------------------------


async def test_download_dir_receives_each_result_and_records_its_path(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """With --download-dir, every success has a file whose path is in its line."""
    path = _write(tmp_path / "in.txt", _urls(server, 3))
    result = await run_cli(path, "--base-url", server.base_url, "--download-dir", "images")
    paths = [Path(r["path"]) for r in result.records]
    assert ([True] * 3, [Path("images")] * 3, 3) == (
        [p.is_file() for p in paths],
        [p.parent for p in paths],
        len(set(paths)),
    )


async def test_failed_download_fails_the_input(
    run_cli: RunCli,
    tmp_path: Path,
    loopback: Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]],
) -> None:
    """With --download-dir, an input whose result cannot be downloaded is a failure."""
    base = ""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return web.json_response({"image": f"{base}/gone.png"})
        return web.json_response({"error": {"code": "gone", "message": "gone"}}, status=404)

    base = await loopback(handler)
    path = _write(tmp_path / "in.txt", [f"{base}/input.png"])
    result = await run_cli(path, "--base-url", base, "--download-dir", "images")
    (record,) = result.records
    expected = (1, False, f"{base}/gone.png", None, "download", "NotFoundError", 404)
    error = record["error"]
    assert expected == (
        result.code,
        record["ok"],
        record["result"],
        record["path"],
        error["stage"],
        error["type"],
        error["status"],
    )


async def test_download_that_cannot_be_written_fails_the_input(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """A local disk error while saving a result fails that input, its record naming the
    file and the option; the run goes on."""
    urls = _urls(server, 2)
    path = _write(tmp_path / "in.txt", urls)
    # A directory where the first result's file should go: the rename onto it fails.
    taken = Path("images") / download_name(1, urls[0], "x.png")
    (tmp_path / taken).mkdir(parents=True)
    result = await run_cli(path, "--base-url", server.base_url, "--download-dir", "images")
    outcomes = sorted(
        (r["line"], r["ok"], r["error"] and r["error"]["stage"]) for r in result.records
    )
    assert (1, [(1, False, "download"), (2, True, None)]) == (result.code, outcomes)
    (message,) = [r["error"]["message"] for r in result.records if not r["ok"]]
    assert f"cannot write {str(taken)!r} (--download-dir): Is a directory" == message


async def test_an_unwritable_download_dir_is_refused_before_sending(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path, unwritable_dir: Path
) -> None:
    """A --download-dir that takes no file: status 2, one line naming the option, and
    not one request sent (each would be billed, then fail to save)."""
    path = _write(tmp_path / "in.txt", _urls(server, 3))
    result = await run_cli(
        path, "--base-url", server.base_url, "--download-dir", str(unwritable_dir)
    )
    assert (2, 0, []) == (result.code, server.stats.total, result.records)
    assert [
        f"monica-upscale: error: cannot write files in --download-dir {str(unwritable_dir)!r}: "
        "Permission denied; nothing was sent"
    ] == result.err.splitlines()


@pytest.mark.parametrize("quiet", [False, True])
async def test_resume_is_advised_only_when_a_retry_could_succeed(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path, quiet: bool
) -> None:
    """Inputs that can never succeed (not URLs, unreadable lines) get no advice to
    --resume: it would fail them again. One failure a retry may cure brings it back."""
    urls = _urls(server, 2)
    server.script_faults(urls[1], [Fault.HTTP_500])
    loudness = ["--quiet"] if quiet else []
    hopeless = _write(tmp_path / "bad.jsonl", ["{oops", json.dumps({"url": "not a url"})])
    mixed = _write(tmp_path / "mixed.txt", ["not a url", *urls])
    first = await run_cli(hopeless, "--base-url", server.base_url, *loudness, output="a.jsonl")
    second = await run_cli(
        mixed, "--base-url", server.base_url, "--retries", "0", *loudness, output="b.jsonl"
    )
    assert [(1, False), (1, True)] == [(r.code, HINT in r.err) for r in (first, second)]


# -- shards -----------------------------------------------------------------------------


async def test_shards_cover_every_input_exactly_once(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """N shards of one input file together send every input once, none twice."""
    urls = _urls(server, 20)
    lines = []
    for i, url in enumerate(urls):
        lines.append(url)
        if i % 3 == 0:
            lines.append("# a comment shifts nothing: shards use physical line numbers")
    path = _write(tmp_path / "in.txt", lines)
    taken: list[int] = []
    for k in range(3):
        result = await run_cli(
            path, "--base-url", server.base_url, "--shard", f"{k}/3", output=f"out-{k}.jsonl"
        )
        taken += [r["line"] for r in result.records]
    expected_lines = sorted(i for i, line in enumerate(lines, 1) if not line.startswith("#"))
    assert (expected_lines, [1] * 20) == (
        sorted(taken),
        [server.stats.attempts_by_image[u] for u in urls],
    )


@pytest.mark.slow
async def test_the_keys_limits_stated_on_the_command_line_are_kept(
    run_cli: RunCli, api_key: str, tmp_path: Path
) -> None:
    """--rate 6/3s --in-flight 3 against a server enforcing exactly those (a Monica key's
    10 per minute and 8 in flight, time-scaled): every input done, no 429, at most 3 at
    once, and the banner says so."""
    async with FakeMonicaServer(
        api_key=api_key, process_images=False, latency=0.2, rate_limit=(6, 3.0), max_concurrency=3
    ) as fake:
        path = _write(tmp_path / "in.txt", _urls(fake, 12))
        result = await run_cli(
            path, "--base-url", fake.base_url, "--rate", "6/3s", "--in-flight", "3"
        )
        stats = fake.stats
    assert (0, 12) == (result.code, len(result.records))
    assert (12, 0, 3) == (stats.accepted, stats.by_status.get(429, 0), stats.peak_concurrency)
    assert "concurrency automatic, at most 3" in result.err
