"""monica-upscale as a real process: errors, stdin, signals, SIGKILL and resume, shards.

The fake server runs in the test's own event loop while the command runs as a
subprocess (``python -m monica_async``), so the server keeps answering while
the test waits for the process.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import PROCESS_TIMEOUT, Cli

from monica_async.testing import FakeMonicaServer

pytest_plugins = ["conftest_redis"]

KEY = "cli-process-test-key"
cli = Cli(KEY)


def _records(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The readable records of a results file, and how many lines were not readable."""
    records, unreadable = [], 0
    for line in path.read_bytes().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            unreadable += 1
    return records, unreadable


def _write_urls(path: Path, urls: list[str]) -> str:
    path.write_text("".join(url + "\n" for url in urls), encoding="utf-8")
    return str(path)


@pytest.fixture
async def server() -> AsyncIterator[FakeMonicaServer]:
    """A fake server that answers with placeholder results (no picture work)."""
    async with FakeMonicaServer(api_key=KEY, process_images=False) as fake:
        yield fake


def _urls(server: FakeMonicaServer, count: int) -> list[str]:
    return [f"{server.base_url}/images/input-{i}.png" for i in range(count)]


async def _until(condition: Any, what: str, timeout: float = PROCESS_TIMEOUT) -> None:
    """Poll *condition* until it is true (a bound, not a speed check)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# -- usage errors: one line, status 2 -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env_change", "needle"),
    [
        (["run", "in.txt", "-o", "out.jsonl"], {"MONICA_API_KEY": ""}, "MONICA_API_KEY"),
        (["run", "in.txt", "-o", "o.jsonl", "--rate", "fast"], {}, "--rate"),
        (["run", "in.txt", "-o", "o.jsonl", "--shard", "3/3"], {}, "--shard"),
        (["run", "absent.txt", "-o", "o.jsonl"], {}, "absent.txt"),
        (["run", "in.txt", "-o", "o.jsonl", "--concurrency", "0"], {}, "--concurrency"),
        (["run", "in.txt", "-o", "o.jsonl", "--timeout", "-1"], {}, "--timeout"),
        (["run", "in.txt", "-o", "o.jsonl", "--frobnicate"], {}, "--frobnicate"),
        (["run", "in.txt"], {}, "--output"),
        (["run", "in.txt", "-o", "o.jsonl", "--api-key-file", "nokey"], {}, "nokey"),
        (["run", "in.txt", "-o", "o.jsonl", "--redis-url", "redis://x"], {}, "--rate"),
        (["run", "in.txt", "-o", "o.jsonl", "--base-url", "http://example.com"], {}, "http"),
        (["run", "in.csv", "-o", "o.jsonl"], {}, "url"),
        (["demo", "--count", "2"], {}, "--count"),
        (["launch"], {}, "launch"),
    ],
)
async def test_usage_errors_are_one_line_with_status_2(
    tmp_path: Path, args: list[str], env_change: dict[str, str], needle: str
) -> None:
    """Each usage or configuration error is one line on stderr, no traceback, status 2."""
    (tmp_path / "in.txt").write_text("http://127.0.0.1:9/a.png\n")
    (tmp_path / "in.csv").write_text("id,link\n1,http://127.0.0.1:9/a.png\n")
    env = cli.env(**env_change)
    if env_change.get("MONICA_API_KEY") == "":
        del env["MONICA_API_KEY"]
    result = await cli.run(*args, cwd=tmp_path, env=env)
    lines = result.err.splitlines()
    assert (2, 1, True, False, "") == (
        result.code,
        len(lines),
        needle in result.err,
        "Traceback" in result.err,
        result.out,
    ), result.err


async def test_missing_rich_is_one_line_naming_the_extra(tmp_path: Path) -> None:
    """Without rich, the command says which extra to install, in one line."""
    code = (
        "import sys; sys.modules['rich'] = None; "
        "from monica_async.cli import main; "
        "sys.exit(main(['run', 'in.txt', '-o', 'o.jsonl']))"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=tmp_path,
        env=cli.env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    result = await cli.finish(process)
    assert (
        2,
        ['monica-upscale: error: the command line needs rich: pip install "monica-async[cli]"'],
    ) == (
        result.code,
        result.err.splitlines(),
    )


async def test_import_monica_async_does_not_import_rich(tmp_path: Path) -> None:
    """The library never needs the command line's extras."""
    code = "import sys, monica_async; print('rich' in sys.modules, 'PIL' in sys.modules)"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    )
    result = await cli.finish(process)
    assert "False False" == result.out.strip()


async def test_entry_point_is_installed(tmp_path: Path) -> None:
    """``monica-upscale`` is an installed command that runs the command line."""
    script = Path(sys.executable).parent / "monica-upscale"
    process = await asyncio.create_subprocess_exec(
        str(script), "--version", cwd=tmp_path, stdout=asyncio.subprocess.PIPE
    )
    result = await cli.finish(process)
    assert (0, True) == (result.code, result.out.startswith("monica-upscale "))


# -- exit statuses, stdin --------------------------------------------------------------------


@pytest.mark.parametrize(("failing", "expected"), [(0, 0), (1, 1)])
async def test_exit_status_tells_whether_every_input_succeeded(
    server: FakeMonicaServer, tmp_path: Path, failing: int, expected: int
) -> None:
    """Status 0 when every input succeeded, 1 when some failed."""
    urls = _urls(server, 3)
    for url in urls[:failing]:
        server.script_faults(url, [server_fault()])
    path = _write_urls(tmp_path / "in.txt", urls)
    result = await cli.run(
        "run",
        path,
        "-o",
        "out.jsonl",
        "--base-url",
        server.base_url,
        "--retries",
        "0",
        cwd=tmp_path,
    )
    assert expected == result.code, result.out + result.err


def server_fault() -> Any:
    """A fault that is not retried with --retries 0."""
    from monica_async.testing import Fault

    return Fault.HTTP_500


async def test_stdin_input_is_read_line_by_line(server: FakeMonicaServer, tmp_path: Path) -> None:
    """``-`` reads the URLs from stdin, with the same line numbering as a file."""
    urls = _urls(server, 3)
    data = ("# from a pipe\n" + "\n".join(urls) + "\n").encode()
    process = await cli.spawn(
        "run",
        "-",
        "-o",
        "out.jsonl",
        "--base-url",
        server.base_url,
        cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE,
    )
    result = await cli.finish(process, data)
    records, _ = _records(tmp_path / "out.jsonl")
    assert (0, [(2, urls[0]), (3, urls[1]), (4, urls[2])]) == (
        result.code,
        sorted((r["line"], r["source"]) for r in records),
    ), result.err


async def test_plain_progress_and_summary_on_stderr_when_it_is_not_a_terminal(
    server: FakeMonicaServer, tmp_path: Path
) -> None:
    """Piped stderr gets plain lines (no terminal control codes) and the summary."""
    path = _write_urls(tmp_path / "in.txt", _urls(server, 2))
    result = await cli.run(
        "run", path, "-o", "out.jsonl", "--base-url", server.base_url, cwd=tmp_path
    )
    assert (False, True, True) == (
        "\x1b[" in result.err,
        "Finished in" in result.err,
        "2 succeeded, 0 failed" in result.err,
    )


# -- interruption ---------------------------------------------------------------------------


def _resume_hint(out: str) -> list[str]:
    lines = out.splitlines()
    index = lines.index("To resume, run:")
    return shlex.split(lines[index + 1])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_signal_lets_in_flight_requests_finish_and_prints_the_resume_command(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """SIGINT/SIGTERM: no new inputs, in-flight ones recorded, exit 130, resume hint works."""
    async with FakeMonicaServer(api_key=KEY, process_images=False, latency=1.5) as server:
        urls = _urls(server, 12)
        path = _write_urls(tmp_path / "in.txt", urls)
        process = await cli.spawn(
            "run",
            path,
            "-o",
            "out.jsonl",
            "--base-url",
            server.base_url,
            "--concurrency",
            "3",
            cwd=tmp_path,
        )
        await _until(lambda: server.stats.in_flight == 3, "three requests in flight")
        process.send_signal(signum)
        result = await cli.finish(process)
        sent_before_resume = server.stats.total
        records, unreadable = _records(tmp_path / "out.jsonl")
        server.latency = None
        hint = _resume_hint(result.err)
        resumed = await cli.finish(
            await asyncio.create_subprocess_exec(
                *hint,
                cwd=tmp_path,
                env=cli.env(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        )
        final, _ = _records(tmp_path / "out.jsonl")
        attempts = server.stats.attempts_by_image
    assert (130, 3, 3, 0, True) == (
        result.code,
        sent_before_resume,
        sum(1 for r in records if r["ok"]),
        unreadable,
        "--resume" in hint,
    ), result.out + result.err
    assert (0, list(range(1, 13)), [1] * 12) == (
        resumed.code,
        sorted(r["line"] for r in final if r["ok"]),
        [attempts[u] for u in urls],
    ), resumed.out + resumed.err


@pytest.mark.slow
async def test_second_sigint_cancels_requests_in_flight(tmp_path: Path) -> None:
    """A second Ctrl-C does not wait for slow requests: nothing is recorded, exit 130."""
    async with FakeMonicaServer(api_key=KEY, process_images=False, latency=60.0) as server:
        path = _write_urls(tmp_path / "in.txt", _urls(server, 4))
        process = await cli.spawn(
            "run",
            path,
            "-o",
            "out.jsonl",
            "--base-url",
            server.base_url,
            "--concurrency",
            "2",
            cwd=tmp_path,
        )
        await _until(lambda: server.stats.in_flight == 2, "two requests in flight")
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None
        seen = b""
        while b"taking no more inputs" not in seen:
            line = await asyncio.wait_for(process.stderr.readline(), PROCESS_TIMEOUT)
            assert line, "the process ended before acknowledging the first SIGINT"
            seen += line
        process.send_signal(signal.SIGINT)
        result = await cli.finish(process)
    records, _ = _records(tmp_path / "out.jsonl")
    assert (130, [], True) == (
        result.code,
        records,
        "--resume" in _resume_hint(seen.decode() + result.err),
    ), result.out + result.err


@pytest.mark.slow
async def test_sigkill_then_resume_sends_no_success_twice(tmp_path: Path) -> None:
    """Killed mid-batch (SIGKILL) then resumed: one success line per input, none resent."""
    count = 40
    async with FakeMonicaServer(api_key=KEY, process_images=False, latency=0.1) as server:
        urls = _urls(server, count)
        path = _write_urls(tmp_path / "in.txt", urls)
        args = ["run", path, "-o", "out.jsonl", "--base-url", server.base_url]
        process = await cli.spawn(*args, "--concurrency", "4", cwd=tmp_path)
        out = tmp_path / "out.jsonl"
        await _until(lambda: out.exists() and out.read_bytes().count(b"\n") >= 10, "ten records")
        process.kill()
        await process.wait()
        killed, _ = _records(out)
        written_before = {r["source"] for r in killed if r["ok"]}
        resumed = await cli.run(*args, "--resume", cwd=tmp_path)
        final, unreadable = _records(out)
        attempts = server.stats.attempts_by_image
    successes = Counter(r["line"] for r in final if r["ok"])
    assert (True, 0, dict.fromkeys(range(1, count + 1), 1), unreadable <= 1) == (
        len(killed) < count,
        resumed.code,
        dict(successes),
        True,
    ), resumed.out + resumed.err
    assert dict.fromkeys(written_before, 1) == {u: attempts[u] for u in written_before}


# -- shards sharing a limit through Redis -----------------------------------------------------


@pytest.mark.redis
@pytest.mark.slow
async def test_shards_share_one_rate_limit_through_redis(tmp_path: Path, redis_server: Any) -> None:
    """Two shard processes with --redis-url stay within one shared --rate together."""
    # The server allows 3 requests per 2 s; the shards share 3 per 3 s. Each shard alone
    # would start its 3 inputs at once, so without sharing the server would answer 429.
    async with FakeMonicaServer(api_key=KEY, process_images=False, rate_limit=(3, 2.0)) as server:
        urls = _urls(server, 6)
        path = _write_urls(tmp_path / "in.txt", urls)
        common = ["run", path, "--base-url", server.base_url, "--rate", "3/3s"]
        common += ["--redis-url", redis_server.url, "--retries", "0"]
        shards = [
            await cli.spawn(*common, "--shard", f"{k}/2", "-o", f"out-{k}.jsonl", cwd=tmp_path)
            for k in range(2)
        ]
        results = [await cli.finish(process) for process in shards]
        rate_limited = server.stats.rate_limited
    lines = sorted(
        r["line"] for k in range(2) for r in _records(tmp_path / f"out-{k}.jsonl")[0] if r["ok"]
    )
    assert ([0, 0], list(range(1, 7)), 0) == (
        [r.code for r in results],
        lines,
        rate_limited,
    ), [r.out + r.err for r in results]


# -- serve-fake ---------------------------------------------------------------------------------


async def test_serve_fake_prints_its_url_and_stops_on_sigint(tmp_path: Path) -> None:
    """``serve-fake`` runs the fake server until Ctrl-C, printing where it listens."""
    process = await cli.spawn("serve-fake", "--port", "0", cwd=tmp_path)
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), PROCESS_TIMEOUT)
    process.send_signal(signal.SIGINT)
    result = await cli.finish(process)
    assert (True, 0) == (line.decode().startswith("READY http://127.0.0.1:"), result.code)
