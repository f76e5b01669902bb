"""monica-upscale's Unix manners, as real processes: streams, loudness, refusals, help.

stdout carries only data (the records of ``run -o -``); progress, notes, log records
and the summary go to stderr. ``-q`` leaves errors only, ``-v``/``-vv`` add the
library's retries and attempts. Every refusal names a flag the command has, and
every option of every subcommand has help text.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import io
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from cli_helpers import COMMAND, PROCESS_TIMEOUT, Cli

from monica_async.cli._main import build_parser, run_options
from monica_async.cli._options import RunOptions
from monica_async.cli._run import _client, _limiter, execute
from monica_async.testing import FakeMonicaServer, Fault
from monica_async.testing._serve import build_parser as build_serve_parser

KEY = "cli-manners-SECRET-key-0123456789"
cli = Cli(KEY)
#: A Python argument name (allow_insecure_http, base_url...): no refusal may show one.
PYTHON_NAME = re.compile(r"\b[a-z]+(?:_[a-z]+)+\b")


@pytest.fixture
async def server() -> AsyncIterator[FakeMonicaServer]:
    """A fake server that answers with placeholder results (no picture work)."""
    async with FakeMonicaServer(api_key=KEY, process_images=False) as fake:
        yield fake


def _inputs(tmp_path: Path, server: FakeMonicaServer, count: int) -> tuple[str, list[str]]:
    urls = [f"{server.base_url}/images/input-{i}.png" for i in range(count)]
    path = tmp_path / "in.txt"
    path.write_text("".join(url + "\n" for url in urls), encoding="utf-8")
    return str(path), urls


# -- streams -------------------------------------------------------------------------------


async def test_output_dash_streams_json_lines_and_nothing_else_to_stdout(
    server: FakeMonicaServer, tmp_path: Path
) -> None:
    """``-o -``: stdout, read line by line, is one JSON record per input and nothing else."""
    path, urls = _inputs(tmp_path, server, 5)
    process = await cli.spawn("run", path, "-o", "-", "--base-url", server.base_url, cwd=tmp_path)
    assert process.stdout is not None
    assert process.stderr is not None
    err_task = asyncio.ensure_future(process.stderr.read())
    records = []
    while line := await asyncio.wait_for(process.stdout.readline(), PROCESS_TIMEOUT):
        records.append(json.loads(line))  # any line that is not JSON fails here
    code = await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT)
    err = (await err_task).decode()
    assert (0, sorted(urls), [True] * 5, False, True, True) == (
        code,
        sorted(r["source"] for r in records),
        [r["ok"] for r in records],
        (tmp_path / "-").exists(),
        "results to stdout" in err,
        "Finished in" in err and "5 succeeded, 0 failed" in err,
    ), err


async def test_output_dash_composes_with_a_json_parser_in_a_pipe(
    server: FakeMonicaServer, tmp_path: Path
) -> None:
    """``run ... -o - | python -c 'parse each line'`` works as a pipeline of two processes."""
    path, _ = _inputs(tmp_path, server, 4)
    read_end, write_end = os.pipe()
    producer = await cli.spawn(
        "run", path, "-o", "-", "--base-url", server.base_url, cwd=tmp_path, stdout=write_end
    )
    os.close(write_end)
    parse = "import json, sys; print(sorted(json.loads(line)['line'] for line in sys.stdin))"
    consumer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", parse, stdin=read_end, stdout=asyncio.subprocess.PIPE
    )
    os.close(read_end)
    produced = await cli.finish(producer)
    parsed = await cli.finish(consumer)
    assert (0, 0, "[1, 2, 3, 4]") == (produced.code, parsed.code, parsed.out.strip())


async def test_output_file_leaves_stdout_empty(server: FakeMonicaServer, tmp_path: Path) -> None:
    """With ``-o FILE``, stdout stays empty: the banner, progress and summary are on stderr."""
    path, _ = _inputs(tmp_path, server, 2)
    result = await cli.run(
        "run", path, "-o", "out.jsonl", "--base-url", server.base_url, cwd=tmp_path
    )
    assert (0, "", True, True) == (
        result.code,
        result.out,
        result.err.startswith("Upscaling"),
        "Finished in" in result.err,
    )


async def test_a_run_whose_stderr_is_gone_still_exits_0(
    server: FakeMonicaServer, tmp_path: Path
) -> None:
    """``run ... 2>&1 | head -1``: a reader of stderr that went away (here before the
    first line) changes nothing of the run: every record is written, status 0."""
    path, urls = _inputs(tmp_path, server, 3)
    read_end, write_end = os.pipe()
    os.close(read_end)
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        *("run", path, "-o", "out.jsonl", "--base-url", server.base_url),
        cwd=tmp_path,
        env=cli.env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=write_end,
    )
    os.close(write_end)
    code = await asyncio.wait_for(process.wait(), PROCESS_TIMEOUT)
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert (0, sorted(urls), [True] * 3) == (
        code,
        sorted(r["source"] for r in records),
        [r["ok"] for r in records],
    )


@pytest.mark.slow
async def test_reader_going_away_stops_the_run_quietly(tmp_path: Path) -> None:
    """``-o - | head -1``: when the reader closes the pipe, the run stops, status 141,
    without a traceback."""
    async with FakeMonicaServer(api_key=KEY, process_images=False, latency=0.05) as slow:
        path, _ = _inputs(tmp_path, slow, 200)
        read_end, write_end = os.pipe()
        process = await cli.spawn(
            "run",
            path,
            "-o",
            "-",
            "--base-url",
            slow.base_url,
            "--concurrency",
            "2",
            cwd=tmp_path,
            stdout=write_end,
        )
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            first = await asyncio.to_thread(reader.readline)
        result = await cli.finish(process)
        sent = slow.stats.total
    assert (141, True, False, True) == (
        result.code,
        json.loads(first)["ok"],
        "Traceback" in result.err,
        sent < 200,
    ), result.err


# -- loudness --------------------------------------------------------------------------------


async def test_quiet_prints_nothing_when_all_succeed(
    server: FakeMonicaServer, tmp_path: Path
) -> None:
    """``-q`` on a clean run: no banner, no progress, no summary."""
    path, _ = _inputs(tmp_path, server, 2)
    result = await cli.run(
        "run", path, "-o", "out.jsonl", "--base-url", server.base_url, "-q", cwd=tmp_path
    )
    assert (0, "", "") == (result.code, result.out, result.err)


async def test_quiet_prints_one_line_when_some_fail(
    server: FakeMonicaServer, tmp_path: Path
) -> None:
    """``-q`` with failures: one error line that counts them and says where to look."""
    path, urls = _inputs(tmp_path, server, 3)
    server.script_faults(urls[0], [Fault.HTTP_500])
    result = await cli.run(
        "run",
        path,
        "-o",
        "out.jsonl",
        "--base-url",
        server.base_url,
        "--retries",
        "0",
        "--quiet",
        cwd=tmp_path,
    )
    (line,) = result.err.splitlines()
    assert (1, "", True, True) == (
        result.code,
        result.out,
        line.startswith("monica-upscale: 1 of 3 input(s) failed (InternalServerError 1)"),
        "--resume" in line,
    ), result.err


async def test_verbose_shows_each_retry_and_never_the_key(
    server: FakeMonicaServer, tmp_path: Path
) -> None:
    """``-v`` shows a retry at INFO with its reason; no attempt lines; the key never shows."""
    path, urls = _inputs(tmp_path, server, 2)
    server.script_faults(urls[1], [Fault.HTTP_503])
    result = await cli.run(
        "run", path, "-o", "out.jsonl", "--base-url", server.base_url, "-v", cwd=tmp_path
    )
    retries = [line for line in result.err.splitlines() if "retrying" in line]
    assert (0, 1, True, True, False, False, "") == (
        result.code,
        len(retries),
        retries[0].startswith("INFO monica_async: upscale "),
        "after HTTP 503" in retries[0],
        "DEBUG" in result.err,
        KEY in result.err,
        result.out,
    ), result.err


async def test_very_verbose_shows_every_attempt_and_never_the_key(
    server: FakeMonicaServer, tmp_path: Path
) -> None:
    """``-vv`` shows every HTTP attempt at DEBUG, retries included; the key never shows."""
    path, urls = _inputs(tmp_path, server, 3)
    server.script_faults(urls[0], [Fault.HTTP_503])
    result = await cli.run(
        "run", path, "-o", "out.jsonl", "--base-url", server.base_url, "-vv", cwd=tmp_path
    )
    attempts = [line for line in result.err.splitlines() if line.startswith("DEBUG ")]
    assert (0, 4, 1, False) == (
        result.code,
        sum("POST /v1/image/tool/upscale" in line for line in attempts),
        sum("-> 503" in line for line in attempts),
        KEY in result.err,
    ), result.err


async def test_log_records_print_above_the_progress_bar(
    server: FakeMonicaServer, tmp_path: Path
) -> None:
    """With a bar drawn on stderr, ``-v`` records go through it, and nothing to stdout."""
    path, urls = _inputs(tmp_path, server, 2)
    server.script_faults(urls[0], [Fault.HTTP_503])
    options = RunOptions(
        input=path,
        output=tmp_path / "out.jsonl",
        api_key=KEY,
        base_url=server.base_url,
        progress_bar=True,
        verbosity=1,
    )
    out, err = io.StringIO(), io.StringIO()
    code = await execute(options, out=out, err=err)
    shown = err.getvalue()
    assert (0, "", True, True, False) == (
        code,
        out.getvalue(),
        "INFO monica_async: upscale " in shown and "after HTTP 503" in shown,
        "Finished in" in shown,
        KEY in shown,
    ), shown


async def test_quiet_and_verbose_together_are_refused(tmp_path: Path) -> None:
    """``-q`` and ``-v`` contradict each other: a usage error naming both."""
    result = await cli.run("run", "in.txt", "-o", "out.jsonl", "-q", "-v", cwd=tmp_path)
    assert (2, True) == (result.code, "-q/--quiet" in result.err and "-v" in result.err)


# -- refusals name a flag the command has ------------------------------------------------------


def _options_of(command: str) -> set[str]:
    if command == "serve-fake":
        parser = build_serve_parser()
    else:
        commands = next(
            a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
        )
        parser = commands.choices[command]
    return {flag for action in parser._actions for flag in action.option_strings}


@pytest.mark.parametrize(
    ("args", "env_change", "flag"),
    [
        (["run", "in.txt", "-o", "o.jsonl"], {"MONICA_API_KEY": ""}, "--api-key-file"),
        (["run", "in.txt", "-o", "o.jsonl", "--rate", "fast"], {}, "--rate"),
        (["run", "in.txt", "-o", "o.jsonl", "--shard", "3/3"], {}, "--shard"),
        (["run", "in.txt", "-o", "o.jsonl", "--concurrency", "0"], {}, "--concurrency"),
        (["run", "in.txt", "-o", "o.jsonl", "--in-flight", "0"], {}, "--in-flight"),
        (
            ["run", "in.txt", "-o", "o.jsonl", "--in-flight", "8", "--concurrency", "4"],
            {},
            "--in-flight",
        ),
        (["run", "in.txt", "-o", "o.jsonl", "--timeout", "-1"], {}, "--timeout"),
        (["run", "in.txt", "-o", "o.jsonl", "--api-key-file", "nokey"], {}, "--api-key-file"),
        (["run", "in.txt", "-o", "o.jsonl", "--redis-url", "redis://x"], {}, "--rate"),
        (
            ["run", "in.txt", "-o", "o.jsonl", "--rate", "1/s", "--redis-url", "nonsense"],
            {},
            "--redis-url",
        ),
        (
            ["run", "in.txt", "-o", "o.jsonl", "--base-url", "http://example.com"],
            {},
            "--allow-insecure-http",
        ),
        (
            ["run", "in.txt", "-o", "o.jsonl"],
            {"MONICA_BASE_URL": "http://example.com"},
            "--allow-insecure-http",
        ),
        (["run", "in.txt", "-o", "o.jsonl", "--base-url", "ftp://example.com"], {}, "--base-url"),
        (["run", "in.txt", "-o", "-", "--resume"], {}, "--output"),
        (["run", "in.txt", "-o", "done.jsonl"], {}, "--resume"),
        (["demo", "--count", "2"], {}, "--count"),
        (["demo", "--count", "100000"], {}, "--count"),
        (["serve-fake", "--rate-limit", "lots"], {}, "--rate-limit"),
        (["serve-fake", "--fault-rate", "2"], {}, "--fault-rate"),
        (["serve-fake", "--max-concurrency", "0"], {}, "--max-concurrency"),
        (["serve-fake", "--latency", "-1"], {}, "--latency"),
    ],
)
async def test_each_refusal_names_a_flag_the_command_has(
    tmp_path: Path, args: list[str], env_change: dict[str, str], flag: str
) -> None:
    """A refusal says which flag to change, and that flag exists (no Python argument names)."""
    (tmp_path / "in.txt").write_text("http://127.0.0.1:9/a.png\n")
    (tmp_path / "done.jsonl").write_text('{"line": 1, "source": "x", "ok": true}\n')
    env = cli.env(**env_change)
    if env_change.get("MONICA_API_KEY") == "":
        del env["MONICA_API_KEY"]
    result = await cli.run(*args, cwd=tmp_path, env=env)
    last = result.err.splitlines()[-1]
    assert (2, True, True, False, "") == (
        result.code,
        flag in last,
        flag in _options_of(args[0]),
        PYTHON_NAME.findall(last.split("error:", 1)[1]) != [],
        result.out,
    ), result.err


async def test_insecure_http_base_url_is_accepted_with_the_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--allow-insecure-http`` lets a plain http API root on another machine through."""
    monkeypatch.setenv("MONICA_API_KEY", KEY)
    args = build_parser().parse_args(
        [
            "run",
            "in.txt",
            "-o",
            "o.jsonl",
            "--base-url",
            "http://api.test:8080",
            "--allow-insecure-http",
        ]
    )
    options = run_options(args, None)
    client = _client(options, _limiter(options))
    try:
        assert ("http://api.test:8080", True) == (client.base_url, client.allow_insecure_http)
    finally:
        await client.aclose()


async def test_plain_http_result_is_not_downloaded_without_the_flag(tmp_path: Path) -> None:
    """A result URL in plain http from another machine fails its download, naming the flag."""

    async def upscale(request: web.Request) -> web.Response:
        return web.json_response({"image": "http://results.test/cat.png"})

    app = web.Application()
    app.router.add_post("/v1/image/tool/upscale", upscale)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        (tmp_path / "in.txt").write_text(f"http://127.0.0.1:{port}/cat.png\n")
        result = await cli.run(
            "run",
            "in.txt",
            "-o",
            "out.jsonl",
            "--base-url",
            f"http://127.0.0.1:{port}",
            "--download-dir",
            "images",
            cwd=tmp_path,
        )
    finally:
        await runner.cleanup()
    (record,) = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert (1, "download", True) == (
        result.code,
        record["error"]["stage"],
        "--allow-insecure-http" in record["error"]["message"],
    ), result.err


# -- help ------------------------------------------------------------------------------------


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parsers = {name: parser for name, parser in commands.choices.items() if name != "serve-fake"}
    parsers["serve-fake"] = build_serve_parser()
    return parsers


def test_every_option_of_every_subcommand_has_help_text() -> None:
    """No option is left without help, and none is hidden from it."""
    missing = [
        (name, action.option_strings or action.dest)
        for name, parser in _subparsers().items()
        for action in parser._actions
        if not action.help or action.help == argparse.SUPPRESS
    ]
    assert [] == missing


async def test_run_help_ends_with_examples(tmp_path: Path) -> None:
    """``run --help`` ends with examples: a file, stdin, a rate, resume, shards, Redis."""
    result = await cli.run("run", "--help", cwd=tmp_path)
    examples = result.out[result.out.index("examples:") :]
    commands = [line.strip() for line in examples.splitlines() if "monica-upscale run" in line]
    wanted = {
        "a file": any(c.startswith("monica-upscale run urls.txt -o ") for c in commands),
        "stdin": any(" run - " in c for c in commands),
        "stdout": any(" -o - " in c for c in commands),
        "rate": any("--rate 60/min" in c for c in commands),
        "resume": any("--resume" in c for c in commands),
        "shards": any("--shard 0/4" in c for c in commands),
        "redis": "--redis-url redis://" in examples,
    }
    assert (0, dict.fromkeys(wanted, True)) == (result.code, wanted)


async def test_demo_help_states_the_limits_of_count(tmp_path: Path) -> None:
    """``demo --help`` says how few and how many pictures --count takes."""
    result = await cli.run("demo", "--help", cwd=tmp_path)
    text = " ".join(result.out.split())
    assert (0, True) == (result.code, "--count N pictures, 6 to 200" in text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("60/min", (60, 60.0)), ("5/s", (5, 1.0)), ("10/30s", (10, 30.0)), ("60/60", (60, 60.0))],
)
def test_serve_fake_rate_limit_reads_the_syntax_of_run_rate(
    text: str, expected: tuple[int, float]
) -> None:
    """``serve-fake --rate-limit`` takes ``run --rate``'s syntax, and still the old N/SECONDS."""
    assert expected == build_serve_parser().parse_args(["--rate-limit", text]).rate_limit


# -- a package of its own --------------------------------------------------------------------

PACKAGE = Path(__file__).resolve().parent.parent / "monica_async"


def _imported_modules(path: Path) -> set[str]:
    """The absolute names of the modules a source file of the package imports."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_library_never_imports_the_command_line() -> None:
    """No module outside ``monica_async/cli`` imports it (``__main__`` only runs it)."""
    library = [
        path
        for path in PACKAGE.rglob("*.py")
        if "cli" not in path.relative_to(PACKAGE).parts[:1] and path.name != "__main__.py"
    ]
    importers = sorted(
        str(path.relative_to(PACKAGE))
        for path in library
        if any(
            name == "monica_async.cli" or name.startswith("monica_async.cli.")
            for name in _imported_modules(path)
        )
    )
    assert (True, []) == (len(library) > 10, importers)


async def test_importing_the_library_loads_no_command_line_module(tmp_path: Path) -> None:
    """``import monica_async`` and its testing package leave ``monica_async.cli`` unloaded."""
    code = (
        "import sys, monica_async, monica_async.testing; "
        "print(sorted(m for m in sys.modules if m.startswith('monica_async.cli')))"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    )
    result = await cli.finish(process)
    assert (0, "[]") == (result.code, result.out.strip())
