"""monica-upscale run with buckets: object inputs, --staging, directories, --download-dir s3://.

In process (``execute``) for behaviour, as a real process for SIGKILL and resume, against
moto's S3 server and the fake Monica server, both on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from aiohttp import web
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


# -- at scale and at the edges -----------------------------------------------------------------

S3_HINT = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
#: A bucket of a store without credentials.
NOWHERE = "no-credentials-bucket"
#: Bigger than a part: results of this size go up as multipart uploads.
BIG = 5 * 1024 * 1024 + 1000


@pytest.mark.slow
@pytest.mark.parametrize(
    ("scheme", "says"),
    [
        ("s3", f"reading s3://{NOWHERE}/in/0.png failed: no credentials found; {S3_HINT}"),
        ("gs", f"reading gs://{NOWHERE}/in/0.png failed: no credentials found; set GOOGLE_"),
        (
            "az",
            f"opening a store for az://{NOWHERE}/in/0.png failed: no account found; set "
            "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY, or with "
            "AZURE_STORAGE_SAS_TOKEN, or with a service principal",
        ),
    ],
)
async def test_inputs_in_a_store_without_credentials_are_one_usage_error(
    run_cli: RunCli,
    server: FakeMonicaServer,
    no_credentials: dict[str, str],
    tmp_path: Path,
    scheme: str,
    says: str,
) -> None:
    """40 objects of a store without credentials: status 2 at once, nothing sent, no line.

    The metadata services are on a closed loopback port. (Before the check, each input
    waited out the credential chain: 129 s for 40 s3:// inputs, exit status 1.)
    """
    inputs = [f"{scheme}://{NOWHERE}/in/{n}.png" for n in range(40)]
    loop = asyncio.get_running_loop()
    began = loop.time()
    result = await run_cli(_write(tmp_path / "in.txt", inputs), "--base-url", server.base_url)
    elapsed = loop.time() - began
    assert (2, True, [], 0) == (
        result.code,
        f"the inputs name objects in {scheme}://{NOWHERE}, which cannot be read: {says}"
        in result.err,
        result.records,
        server.stats.total,
    ), result.err
    assert elapsed < 60, f"{elapsed:.1f}s: more than one credential chain was walked"


async def test_input_bucket_the_credentials_may_not_read_is_one_usage_error(
    run_cli: RunCli,
    server: FakeMonicaServer,
    bucket: Bucket,
    moto_server: MotoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every object tried in the bucket is denied: status 2, nothing sent."""
    inputs = [bucket.put(f"in/{n}.png", PICTURE) for n in range(5)]
    for name, value in bucket.credentials_for("s3:PutObject").items():
        monkeypatch.setenv(name, value)
    with moto_server.auth_enforced():
        result = await run_cli(_write(tmp_path / "in.txt", inputs), "--base-url", server.base_url)
    assert (2, True, 0) == (
        result.code,
        f"reading {bucket.url('in/2.png')} failed: access denied" in result.err,
        server.stats.total,
    ), result.err


async def test_missing_first_object_does_not_stop_the_run(
    run_cli: RunCli, server: FakeMonicaServer, bucket: Bucket, tmp_path: Path
) -> None:
    """The bucket check takes a missing object as a readable bucket: that line fails alone."""
    present = bucket.put("in/there.png", PICTURE)
    result = await run_cli(
        _write(tmp_path / "in.txt", [bucket.url("in/absent.png"), present]),
        "--base-url",
        server.base_url,
    )
    by_line = {r["line"]: r["ok"] for r in result.records}
    assert (1, {1: False, 2: True}) == (result.code, by_line), result.err


async def test_keys_with_spaces_and_non_ascii_in_and_out(
    run_cli: RunCli, server: FakeMonicaServer, bucket: Bucket, tmp_path: Path
) -> None:
    """Object inputs, a staged file, --staging and --download-dir with spaces and accents."""
    source = bucket.put("dir with space/cat é.png", PICTURE)
    [local] = _pictures(tmp_path, ["my photos/dog é.png"])
    result = await run_cli(
        _write(tmp_path / "in.txt", [source, local]),
        "--base-url",
        server.base_url,
        "--staging",
        bucket.url("tmp dir/é/"),
        "--download-dir",
        bucket.url("out dir/"),
    )
    paths = sorted(r["path"] for r in result.records)
    assert (0, [bucket.url(k) for k in bucket.keys("out dir/")], []) == (
        result.code,
        paths,
        bucket.keys("tmp dir/"),
    ), result.err
    assert [True, True] == [_is_png(bucket.read(k)) for k in bucket.keys("out dir/")]


@pytest.mark.parametrize(("shard", "aborted"), [(None, 2), ("1/2", 1)])
async def test_resume_aborts_the_uploads_of_earlier_runs(
    run_cli: RunCli,
    server: FakeMonicaServer,
    bucket: Bucket,
    moto_server: MotoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shard: str | None,
    aborted: int,
) -> None:
    """--resume aborts the unfinished uploads named as results of its lines, and says so.

    Others stay: another name, another prefix, deeper, another shard's line. Moto checks
    the signatures of the listing and the aborts.
    """
    ours = ["out/3-cat-0123abcd.png", "out/4-dog-89abcdef.jpg"]
    others = ["out/notes.txt", "elsewhere/5-cat-0123abcd.png", "out/sub/7-cat-0123abcd.png"]
    for key in ours + others:
        bucket.start_upload(key)
    for name, value in bucket.credentials_for("s3:*").items():
        monkeypatch.setenv(name, value)
    kept = [k for k in ours if shard is not None and k.startswith("out/4-")] + others
    args = ["--base-url", server.base_url, "--download-dir", bucket.url("out/"), "--resume"]
    with moto_server.auth_enforced():
        result = await run_cli(
            _write(tmp_path / "in.txt", [server.add_image(PICTURE)]),
            *args,
            *(["--shard", shard] if shard else []),
        )
    assert (True, sorted(kept)) == (
        f"--resume: aborted {aborted} unfinished upload(s) of earlier runs under "
        f"{bucket.url('out/')}" in result.err,
        bucket.upload_keys(),
    ), result.err


async def test_resume_says_why_it_could_not_clean(
    run_cli: RunCli,
    server: FakeMonicaServer,
    bucket: Bucket,
    moto_server: MotoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Credentials that may not list uploads: a note, and the run goes on."""
    bucket.start_upload("out/3-cat-0123abcd.png")
    actions = ("s3:PutObject", "s3:DeleteObject", "s3:GetObject")
    for name, value in bucket.credentials_for(*actions).items():
        monkeypatch.setenv(name, value)
    with moto_server.auth_enforced():
        result = await run_cli(
            _write(tmp_path / "in.txt", [server.add_image(PICTURE)]),
            "--base-url",
            server.base_url,
            "--download-dir",
            bucket.url("out/"),
            "--resume",
        )
    assert (0, True, 1) == (
        result.code,
        f"--resume: cleaning unfinished uploads under {bucket.url('out/')} failed after 0 "
        "aborted: GET answered HTTP 403 (AccessDenied)" in result.err,
        bucket.open_uploads(),
    ), result.err


@attrs.define
class StallingApi:
    """A stand-in for the API whose results are big and, until released, stall part way.

    Each stalled result has sent more than a part, so its upload into the bucket is open.
    """

    base_url: str = ""
    stall: bool = True

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``POST``: a result URL of this server; ``GET /result/...``: the result."""
        if request.method == "POST":
            return web.json_response({"image": f"{self.base_url}/result/{uuid.uuid4().hex}.png"})
        body = b"\x89PNG\r\n\x1a\n" + bytes(BIG - 8)
        response = web.StreamResponse(
            headers={"Content-Type": "image/png", "Content-Length": str(BIG)}
        )
        await response.prepare(request)
        if not self.stall:
            await response.write(body)
            return response
        await response.write(body[: BIG - 500])
        await asyncio.sleep(60)
        return response


async def _until_uploads(bucket: Bucket, count: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROCESS_TIMEOUT
    while await asyncio.to_thread(bucket.open_uploads) < count:
        assert loop.time() < deadline, f"fewer than {count} uploads started"
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_sigkill_during_uploads_then_resume_leaves_no_upload(
    api_key: str, bucket: Bucket, s3_env: dict[str, str], tmp_path: Path, loopback: Any
) -> None:
    """Killed while three results stream into the bucket: --resume aborts their uploads."""
    api = StallingApi()
    api.base_url = await loopback(api.handle)
    inputs = [f"{api.base_url}/in/{n}.png" for n in range(3)]
    args = ["run", _write(tmp_path / "in.txt", inputs), "-o", "out.jsonl"]
    args += ["--base-url", api.base_url, "--download-dir", bucket.url("out/")]
    cli = _cli(api_key)
    env = cli.env(**s3_env)
    process = await cli.spawn(*args, "--concurrency", "3", cwd=tmp_path, env=env)
    await _until_uploads(bucket, 3)
    process.kill()
    await process.wait()
    left = bucket.open_uploads()
    api.stall = False
    resumed = await cli.run(*args, "--resume", cwd=tmp_path, env=env)
    records = _records(tmp_path / "out.jsonl")
    assert (0, True, 0, [True] * 3) == (
        resumed.code,
        f"--resume: aborted {left} unfinished upload(s)" in resumed.err,
        bucket.open_uploads(),
        [r["ok"] for r in records],
    ), resumed.err


@pytest.mark.slow
async def test_sigint_with_a_short_grace_aborts_the_uploads(
    api_key: str, bucket: Bucket, s3_env: dict[str, str], tmp_path: Path, loopback: Any
) -> None:
    """SIGINT, then the grace runs out while results stream in: their uploads are aborted."""
    api = StallingApi()
    api.base_url = await loopback(api.handle)
    inputs = [f"{api.base_url}/in/{n}.png" for n in range(3)]
    args = ["run", _write(tmp_path / "in.txt", inputs), "-o", "out.jsonl", "--grace", "0.2"]
    args += ["--base-url", api.base_url, "--download-dir", bucket.url("out/")]
    cli = _cli(api_key)
    process = await cli.spawn(*args, "--concurrency", "3", cwd=tmp_path, env=cli.env(**s3_env))
    await _until_uploads(bucket, 3)
    process.send_signal(signal.SIGINT)
    finished = await cli.finish(process)
    assert (130, [], 0) == (finished.code, bucket.keys(), bucket.open_uploads()), finished.err


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["s3", "gs"])
async def test_usage_error_after_a_credential_failure_is_status_2_every_time(
    api_key: str, no_credentials: dict[str, str], tmp_path: Path, scheme: str
) -> None:
    """Eight runs at once, each stopped by a --download-dir without credentials: all exit 2.

    The process used to abort at exit (SIGABRT, 134) now and then, after printing the
    usage error: a thread of obstore's runtime still on its way out of Python while the
    interpreter finalized.
    """
    cli = _cli(api_key)
    env = cli.env(**no_credentials)
    args = ["run", _write(tmp_path / "in.txt", []), "--download-dir", f"{scheme}://bucket/out/"]
    runs = [
        cli.spawn(
            *args, "-o", f"out-{n}.jsonl", cwd=tmp_path, env=env, stdout=asyncio.subprocess.DEVNULL
        )
        for n in range(8)
    ]
    finished = [await cli.finish(process) for process in await asyncio.gather(*runs)]
    assert ([2] * 8, [True] * 8) == (
        [f.code for f in finished],
        ["no credentials found" in f.err for f in finished],
    ), [f.err for f in finished]
