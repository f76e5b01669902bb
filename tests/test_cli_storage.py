"""monica-upscale run with buckets: object inputs, --staging, directories, --download-dir s3://.

In process (``execute``) for behaviour, as a real process for SIGKILL and resume, against
moto's S3 server and the fake Monica server, both on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from cli_helpers import Cli

from monica_async.cli._main import build_parser, run_options
from monica_async.cli._options import UsageError
from monica_async.cli._run import execute
from monica_async.testing import FakeMonicaServer, make_sample_image

if TYPE_CHECKING:
    from conftest_moto import Bucket, MotoServer

pytest_plugins = ["conftest_moto"]
pytestmark = pytest.mark.storage

HINT = "monica-upscale run ... --resume"
PICTURE = make_sample_image(20, 12)
PROCESS_TIMEOUT = 60.0


@attrs.frozen
class CliResult:
    """What one in-process run printed and wrote."""

    code: int
    out: str
    err: str
    records: list[dict[str, Any]]


RunCli = Callable[..., Awaitable[CliResult]]


def _records(path: Path) -> list[dict[str, Any]]:
    records = []
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


@pytest.fixture
def run_cli(api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunCli:
    """``await run_cli(*argv)`` parses ``run`` arguments and executes them in this loop."""
    monkeypatch.chdir(tmp_path)

    async def run(*argv: str, output: str = "out.jsonl") -> CliResult:
        args = build_parser().parse_args(["run", *argv, "--output", output])
        out, err = io.StringIO(), io.StringIO()
        code = await execute(run_options(args, HINT), out=out, err=err)
        return CliResult(code, out.getvalue(), err.getvalue(), _records(tmp_path / output))

    return run


@pytest.fixture
async def server(api_key: str) -> AsyncIterator[FakeMonicaServer]:
    """A fake server that fetches and upscales what it is sent."""
    async with FakeMonicaServer(api_key=api_key) as fake:
        yield fake


def _write(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


def _pictures(folder: Path, names: list[str]) -> list[str]:
    paths = []
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(PICTURE)
        paths.append(str(path))
    return paths


def _is_png(data: bytes) -> bool:
    return data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


# -- object inputs and results in a bucket --------------------------------------------------


async def test_results_are_written_under_the_prefix(
    run_cli: RunCli, server: FakeMonicaServer, bucket: Bucket, tmp_path: Path
) -> None:
    """--download-dir s3://... writes each result there and records its object URL."""
    inputs = [bucket.put(f"in/{i}.png", PICTURE) for i in range(3)]
    result = await run_cli(
        _write(tmp_path / "in.txt", inputs),
        "--base-url",
        server.base_url,
        "--download-dir",
        bucket.url("out"),
    )
    paths = sorted(r["path"] for r in result.records)
    keys = bucket.keys("out/")
    assert (0, [bucket.url(k) for k in keys], [True] * 3, inputs) == (
        result.code,
        paths,
        [_is_png(bucket.read(k)) for k in keys],
        sorted(r["source"] for r in result.records),
    ), result.out + result.err


async def test_missing_objects_fail_alone(
    run_cli: RunCli, server: FakeMonicaServer, bucket: Bucket, tmp_path: Path
) -> None:
    """An input object that is missing fails its line (stage input); the rest go on."""
    present = bucket.put("in/there.png", PICTURE)
    result = await run_cli(
        _write(tmp_path / "in.txt", [present, bucket.url("in/absent.png")]),
        "--base-url",
        server.base_url,
    )
    by_line = {r["line"]: r for r in result.records}
    assert (1, True, "input", "StorageError") == (
        result.code,
        by_line[1]["ok"],
        by_line[2]["error"]["stage"],
        by_line[2]["error"]["type"],
    )


async def test_missing_output_bucket_is_one_usage_error(
    run_cli: RunCli, server: FakeMonicaServer, bucket: Bucket, tmp_path: Path
) -> None:
    """A --download-dir bucket that does not exist stops the run at once: status 2, no line."""
    result = await run_cli(
        _write(tmp_path / "in.txt", [bucket.put("in.png", PICTURE)]),
        "--base-url",
        server.base_url,
        "--download-dir",
        "s3://no-such-output-bucket/out/",
    )
    assert (2, True, [], 0) == (
        result.code,
        "--download-dir: writing to s3://no-such-output-bucket/out/" in result.err,
        result.records,
        server.stats.total,
    ), result.err


async def test_denied_output_is_one_usage_error(
    run_cli: RunCli,
    server: FakeMonicaServer,
    bucket: Bucket,
    moto_server: MotoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Credentials that may not write the --download-dir: status 2, nothing sent."""
    urls = _write(tmp_path / "in.txt", [server.add_image(PICTURE)])
    for name, value in bucket.reader_credentials().items():
        monkeypatch.setenv(name, value)
    with moto_server.auth_enforced():
        result = await run_cli(urls, "--base-url", server.base_url, "--download-dir", bucket.url())
    assert (2, True, 0) == (
        result.code,
        "access denied (AccessDenied)" in result.err,
        server.stats.total,
    ), result.err


@pytest.mark.slow
async def test_missing_credentials_are_one_usage_error(
    run_cli: RunCli,
    server: FakeMonicaServer,
    bucket: Bucket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No credentials for the --download-dir bucket: status 2, naming the variables."""
    urls = _write(tmp_path / "in.txt", [server.add_image(PICTURE)])
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    result = await run_cli(urls, "--base-url", server.base_url, "--download-dir", bucket.url())
    assert (2, True) == (result.code, "set AWS_ACCESS_KEY_ID" in result.err), result.err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--download-dir", "s3://"),
        ("--staging", "/tmp/staging"),
        ("--staging", "gs://b/a//b/"),
        ("--download-dir", "s3://b/./out/"),
    ],
)
async def test_malformed_object_locations_are_usage_errors(
    run_cli: RunCli, tmp_path: Path, flag: str, value: str
) -> None:
    """A flag taking an object URL refuses a malformed one, naming the flag (status 2)."""
    with pytest.raises(UsageError, match=flag):
        await run_cli(_write(tmp_path / "in.txt", []), flag, value)


# -- local files: --staging, directories ----------------------------------------------------


async def test_directory_input_is_walked_for_images(
    run_cli: RunCli, server: FakeMonicaServer, bucket: Bucket, tmp_path: Path
) -> None:
    """A directory INPUT: its images, in name order at every level, hidden ones skipped."""
    folder = tmp_path / "photos"
    _pictures(folder, ["b.png", "a.jpg", "sub/c.PNG", ".hidden.png", ".cache/d.png"])
    (folder / "notes.txt").write_text("not an image")
    result = await run_cli(
        "photos",
        "--base-url",
        server.base_url,
        "--staging",
        bucket.url("tmp/"),
        "--concurrency",
        "1",
    )
    expected = [(1, "photos/a.jpg"), (2, "photos/b.png"), (3, "photos/sub/c.PNG")]
    assert (0, expected, [], True) == (
        result.code,
        sorted((r["line"], r["source"]) for r in result.records if r["ok"]),
        bucket.keys("tmp/"),
        "(directory)" in result.err,
    ), result.out + result.err


async def test_directory_input_with_results_in_a_bucket_resumes(
    run_cli: RunCli, server: FakeMonicaServer, bucket: Bucket, tmp_path: Path
) -> None:
    """A second run with --resume sends nothing again and writes nothing again."""
    _pictures(tmp_path / "photos", ["a.png", "b.png"])
    args = ["photos", "--base-url", server.base_url, "--staging", bucket.url("tmp/")]
    args += ["--download-dir", bucket.url("out/")]
    first = await run_cli(*args)
    sent = server.stats.total
    second = await run_cli(*args, "--resume")
    assert (0, 0, sent, 2, 2) == (
        first.code,
        second.code,
        server.stats.total,
        len(bucket.keys("out/")),
        len(second.records),
    )


async def test_local_paths_in_a_list_are_staged(
    run_cli: RunCli, server: FakeMonicaServer, bucket: Bucket, tmp_path: Path
) -> None:
    """Lines of INPUT that are local paths are staged like a directory's images."""
    paths = _pictures(tmp_path, ["one.png", "two.png"])
    result = await run_cli(
        _write(tmp_path / "in.txt", paths),
        "--base-url",
        server.base_url,
        "--staging",
        bucket.url("tmp/"),
    )
    assert (0, sorted(paths), []) == (
        result.code,
        sorted(r["source"] for r in result.records),
        bucket.keys("tmp/"),
    )


async def test_local_path_without_staging_fails_its_line(
    run_cli: RunCli, server: FakeMonicaServer, tmp_path: Path
) -> None:
    """Without --staging, a local path in INPUT is an input error that names --staging."""
    [path] = _pictures(tmp_path, ["one.png"])
    result = await run_cli(_write(tmp_path / "in.txt", [path]), "--base-url", server.base_url)
    [record] = result.records
    assert (1, "input", True) == (
        result.code,
        record["error"]["stage"],
        "--staging" in record["error"]["message"],
    )


async def test_directory_without_staging_is_a_usage_error(run_cli: RunCli, tmp_path: Path) -> None:
    """A directory INPUT needs --staging: status 2 at once, naming the flag."""
    _pictures(tmp_path / "photos", ["a.png"])
    result = await run_cli("photos")
    assert (2, True) == (result.code, "--staging" in result.err)


# -- as a real process -------------------------------------------------------------------------


def _cli(api_key: str) -> Cli:
    """The command line as a process, inheriting no MONICA_* or AWS_* setting of this one."""
    return Cli(api_key, timeout=PROCESS_TIMEOUT, cleared=("MONICA_", "AWS_"))


@pytest.mark.slow
async def test_sigkill_then_resume_leaves_exactly_the_recorded_objects(
    api_key: str, bucket: Bucket, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """Killed mid-run, then resumed: every input has one success, every object is whole."""
    count = 30
    async with FakeMonicaServer(api_key=api_key, latency=0.05) as server:
        inputs = [bucket.put(f"in/{i:02}.png", PICTURE) for i in range(count)]
        args = ["run", _write(tmp_path / "in.txt", inputs), "-o", "out.jsonl"]
        args += ["--base-url", server.base_url, "--download-dir", bucket.url("out/")]
        args += ["--concurrency", "4"]
        cli = _cli(api_key)
        env = cli.env(**s3_env)
        out = tmp_path / "out.jsonl"
        process = await cli.spawn(*args, cwd=tmp_path, env=env)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROCESS_TIMEOUT
        while not (out.exists() and out.read_bytes().count(b"\n") >= 8):
            assert loop.time() < deadline, "timed out waiting for eight records"
            await asyncio.sleep(0.01)
        process.kill()
        await process.wait()
        killed = [r for r in _records(out) if r["ok"]]
        resumed = await cli.run(*args, "--resume", cwd=tmp_path, env=env)
        code, printed = resumed.code, resumed.out + resumed.err
    final = _records(out)
    successes = Counter(r["line"] for r in final if r["ok"])
    recorded = sorted(r["path"] for r in final if r["ok"])
    keys = bucket.keys("out/")
    assert (True, 0, dict.fromkeys(range(1, count + 1), 1)) == (
        len(killed) < count,
        code,
        dict(successes),
    ), printed
    # No object without its line (a result written then killed before its line may be
    # rewritten by the resumed run: same name, so still one object per input).
    assert (recorded, [True] * count) == (
        [bucket.url(k) for k in keys],
        [_is_png(bucket.read(k)) for k in keys],
    )


async def test_without_the_storage_extra_the_run_names_it(
    api_key: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    """Without obstore installed, --download-dir s3://... is one line naming the extra."""
    shadow = tmp_path / "shadow" / "obstore"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text('raise ImportError("obstore is not installed")\n')
    cli = _cli(api_key)
    env = cli.env(**s3_env, PYTHONPATH=str(tmp_path / "shadow"))
    args = ["run", _write(tmp_path / "in.txt", []), "-o", "out.jsonl"]
    finished = await cli.run(*args, "--download-dir", "s3://bucket/out/", cwd=tmp_path, env=env)
    code, printed = finished.code, finished.out + finished.err
    assert (2, True) == (code, 'pip install "monica-async[storage]"' in printed), printed


async def test_output_that_may_not_be_deleted_from_still_passes_the_check(
    run_cli: RunCli,
    server: FakeMonicaServer,
    bucket: Bucket,
    moto_server: MotoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Write-only credentials pass the start check (its object stays) and the run goes on."""
    urls = _write(tmp_path / "in.txt", [server.add_image(PICTURE)])
    for name, value in bucket.credentials_for("s3:PutObject").items():
        monkeypatch.setenv(name, value)
    with moto_server.auth_enforced():
        result = await run_cli(
            urls, "--base-url", server.base_url, "--download-dir", bucket.url("o")
        )
    [record] = result.records
    assert (0, [record["path"], bucket.url("o/.monica-upscale-write-check")]) == (
        result.code,
        [bucket.url(k) for k in bucket.keys("o/")][::-1],
    ), result.err


def test_file_names_that_are_not_utf8_fail_their_line(tmp_path: Path) -> None:
    """An image whose name is not UTF-8 is an input problem, not a crash."""
    from monica_async.cli._directory import open_directory

    (tmp_path / "good.png").write_bytes(PICTURE)
    with open(os.path.join(os.fsencode(tmp_path), b"bad-\xff.png"), "wb") as file:
        file.write(PICTURE)
    records = list(open_directory(str(tmp_path)).records())
    assert [
        (1, None, "the file name is not valid UTF-8"),
        (2, str(tmp_path / "good.png"), None),
    ] == [(r.line, r.url, r.problem) for r in records]


def test_unreadable_directory_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory INPUT that cannot be listed is one usage error naming it."""
    from monica_async.cli import _directory

    def refuse(path: str) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(_directory.os, "scandir", refuse)
    with pytest.raises(UsageError, match=r"cannot read input directory .*: Permission denied"):
        _directory.open_directory(str(tmp_path))
