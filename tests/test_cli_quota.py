"""monica-upscale run when the key's balance runs out: a stop, a status of its own, a resume."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from cli_helpers import Cli

from monica_async.cli._main import build_parser, run_options
from monica_async.cli._run import EXIT_QUOTA, execute
from monica_async.testing import FakeMonicaServer, documented_limits

KEY = "cli-quota-test-key"
cli = Cli(KEY)
EXHAUSTED = "the balance of this API key is exhausted"


@pytest.fixture
async def server() -> AsyncIterator[FakeMonicaServer]:
    """Monica's default limits, 30 times faster (10 per 2 s, 8 in flight), 5 calls of balance."""
    async with FakeMonicaServer(
        api_key=KEY, process_images=False, latency=(0.05, 0.1), quota=5, **documented_limits(30)
    ) as fake:
        yield fake


def _inputs(path: Path, server: FakeMonicaServer, count: int) -> str:
    lines = [f"{server.base_url}/images/photo-{i}.png" for i in range(count)]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _latest(path: Path) -> dict[int, dict[str, Any]]:
    """The latest record of each line of the results file."""
    records = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    return {record["line"]: record for record in records}


def _kinds(latest: dict[int, dict[str, Any]]) -> Counter[str]:
    return Counter("ok" if r["ok"] else r["error"]["type"] for r in latest.values())


@pytest.mark.slow
async def test_run_stops_on_a_spent_balance_and_resumes_after_a_top_up(
    server: FakeMonicaServer, tmp_path: Path
) -> None:
    """Exit status 75 within seconds, saying why and how to resume; after a top-up,
    ``--resume`` upscales the rest, each input accepted once in all."""
    urls = _inputs(tmp_path / "urls.txt", server, 30)
    # Retries to spare: the test is about the balance, not about pacing within the window.
    args = ("run", urls, "-o", "out.jsonl", "--base-url", server.base_url, "--retries", "10")
    began = time.monotonic()
    stopped = await cli.run(*args, cwd=tmp_path)
    elapsed = time.monotonic() - began
    sent = server.stats.total
    after_stop = _latest(tmp_path / "out.jsonl")
    server.quota = 100
    resumed = await cli.run(*args, "--resume", cwd=tmp_path)
    final = _latest(tmp_path / "out.jsonl")
    hint = stopped.err.split("then run:\n", 1)[-1].splitlines()[0].strip()
    assert (EXIT_QUOTA, True, True, True, 5, True) == (
        stopped.code,
        EXHAUSTED in stopped.err,
        hint.endswith("--resume") and "out.jsonl" in hint,
        elapsed < 20,
        _kinds(after_stop)["ok"],
        sent < 30,
    )
    assert (0, {"ok": 30}, 30) == (resumed.code, _kinds(final), server.stats.accepted), resumed.err


@attrs.frozen
class InProcess:
    """One run of ``execute`` in the test's loop: status and stderr."""

    code: int
    err: str
    out: str


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``await in_process(*argv)`` runs ``run`` with *argv* in this loop, in *tmp_path*."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONICA_API_KEY", KEY)

    async def run(*argv: str) -> InProcess:
        options = run_options(build_parser().parse_args(["run", *argv]), None)
        out, err = io.StringIO(), io.StringIO()
        code = await execute(options, out=out, err=err)
        return InProcess(code, err.getvalue(), out.getvalue())

    return run


async def test_quiet_run_still_says_the_balance_is_exhausted(
    server: FakeMonicaServer, tmp_path: Path, in_process: Any
) -> None:
    """-q drops the progress and summary, not the reason of the stop nor its status."""
    urls = _inputs(tmp_path / "urls.txt", server, 12)
    done = await in_process(urls, "-o", "out.jsonl", "--base-url", server.base_url, "-q")
    assert (EXIT_QUOTA, 1, True) == (done.code, len(done.err.splitlines()), EXHAUSTED in done.err)


async def test_records_to_stdout_say_how_to_go_on_without_resume(
    server: FakeMonicaServer, tmp_path: Path, in_process: Any
) -> None:
    """With -o -, which cannot be resumed, the message says to send the failed inputs again."""
    urls = _inputs(tmp_path / "urls.txt", server, 12)
    done = await in_process(urls, "-o", "-", "--base-url", server.base_url)
    records = [json.loads(line) for line in done.out.splitlines()]
    assert (EXIT_QUOTA, True, False, 5) == (
        done.code,
        "-o - cannot be resumed" in done.err,
        "--resume" in done.err,
        sum(r["ok"] for r in records),
    )
