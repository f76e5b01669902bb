"""monica-upscale as a real process against hostile inputs and killed downloads.

One record, one outcome: a line that cannot be read fails alone and the run goes
on; a killed run's temporary download files are removed by the next run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web
from cli_helpers import PROCESS_TIMEOUT, Cli, Finished

from monica_async.testing import FakeMonicaServer

KEY = "cli-faults-test-key"
cli = Cli(KEY)
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


@attrs.frozen
class Recorded(Finished):
    """A run that ended, with the records it wrote to ``out.jsonl``."""

    records: list[dict[str, Any]]


async def _spawn(*args: str, cwd: Path) -> asyncio.subprocess.Process:
    return await cli.spawn("run", *args, cwd=cwd)


async def _run(*args: str, cwd: Path) -> Recorded:
    finished = await cli.finish(await _spawn(*args, cwd=cwd))
    output = cwd / "out.jsonl"
    records = (
        [json.loads(line) for line in output.read_text("utf-8").splitlines()]
        if output.exists()
        else []
    )
    return Recorded(finished.code, finished.out, finished.err, records)


@pytest.fixture
async def server() -> AsyncIterator[FakeMonicaServer]:
    """A fake server that answers with placeholder results (no picture work)."""
    async with FakeMonicaServer(api_key=KEY, process_images=False) as fake:
        yield fake


def _outcomes(records: list[dict[str, Any]]) -> list[tuple[int, bool, str | None]]:
    """(line, ok, error type) of each record, by line."""
    return sorted(
        (r["line"], r["ok"], None if r["error"] is None else r["error"]["type"]) for r in records
    )


def _url(server: FakeMonicaServer, name: str) -> str:
    return f"{server.base_url}/images/{name}.png"


# -- one malformed record fails alone ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        pytest.param("in.jsonl", b"[" * 2000, id="jsonl-too-deep"),
        pytest.param("in.csv", b"x" * 200_000, id="csv-field-over-the-csv-limit"),
        pytest.param("in.txt", b"http://h/" + b"x" * (1024 * 1024 + 10), id="line-over-1-MiB"),
        pytest.param("in.txt", b"http://h/\xff\xfe.png", id="not-utf-8"),
        pytest.param("in.csv", b'"' + b"x" * 10, id="csv-open-quote"),
    ],
)
async def test_unreadable_line_fails_alone_and_the_run_goes_on(
    server: FakeMonicaServer, tmp_path: Path, name: str, bad: bytes
) -> None:
    """The bad line gets a failure record, every valid line its result, exit status 1."""
    first, last = _url(server, "first"), _url(server, "last")

    def line(url: str) -> bytes:
        return json.dumps({"url": url}).encode() if name.endswith(".jsonl") else url.encode()

    header = b"url\n" if name.endswith(".csv") else b""
    (tmp_path / name).write_bytes(header + b"\n".join([line(first), bad, line(last)]) + b"\n")
    result = await _run(name, "-o", "out.jsonl", "--base-url", server.base_url, cwd=tmp_path)
    n = 2 if header else 1
    expected = [(n, True, None), (n + 1, False, "InputError"), (n + 2, True, None)]
    assert (1, expected, False) == (
        result.code,
        _outcomes(result.records),
        "Traceback" in result.err,
    ), result.out + result.err


async def test_stray_csv_quote_sends_no_glued_url(server: FakeMonicaServer, tmp_path: Path) -> None:
    """A quote left open fails its line; the next lines are sent on their own."""
    a, b, c = (_url(server, n) for n in "abc")
    (tmp_path / "in.csv").write_text(f'url\n"{a}\n{b}\n{c}\n', encoding="utf-8")
    result = await _run("in.csv", "-o", "out.jsonl", "--base-url", server.base_url, cwd=tmp_path)
    expected = [(2, False, "InputError"), (3, True, None), (4, True, None)]
    assert (1, expected, {b: 1, c: 1}) == (
        result.code,
        _outcomes(result.records),
        server.stats.attempts_by_image,
    ), result.out + result.err


# -- a killed run's temporary files ----------------------------------------------------------


class ImageHost:
    """An API stand-in whose result image stalls half-way until told to serve it whole."""

    def __init__(self) -> None:
        self.whole = asyncio.Event()
        self.base_url = ""
        self.image = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64 + PNG_END

    async def upscale(self, request: web.Request) -> web.Response:
        return web.json_response({"image": f"{self.base_url}/results/cat.png"})

    async def result(self, request: web.Request) -> web.StreamResponse:
        if self.whole.is_set():
            return web.Response(body=self.image, content_type="image/png")
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(self.image)
        await response.prepare(request)
        await response.write(self.image[: len(self.image) // 2])
        await asyncio.sleep(PROCESS_TIMEOUT)
        return response


@pytest.fixture
async def image_host() -> AsyncIterator[ImageHost]:
    """:class:`ImageHost` on 127.0.0.1."""
    host = ImageHost()
    app = web.Application()
    app.router.add_post("/v1/image/tool/upscale", host.upscale)
    app.router.add_get("/results/cat.png", host.result)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    address, port = runner.addresses[0][:2]
    host.base_url = f"http://{address}:{port}"
    yield host
    await runner.cleanup()


def _part_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


@pytest.mark.slow
async def test_run_removes_the_temporary_files_of_a_killed_run(
    image_host: ImageHost, tmp_path: Path
) -> None:
    """SIGKILL mid-download leaves a .part file; the next run removes it, and only it."""
    (tmp_path / "in.txt").write_text("https://images.test/cat.png\n", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    foreign = [".notes.part", "cat.png.0123456789abcdef.part", ".cat.png.0123456789ABCDEF.part"]
    for name in foreign:
        (out / name).write_text("not ours")
    args = ["in.txt", "-o", "out.jsonl", "--base-url", image_host.base_url, "--download-dir", "out"]
    process = await _spawn(*args, cwd=tmp_path)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PROCESS_TIMEOUT
    while len(_part_files(out)) == len(foreign) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    left = sorted(set(_part_files(out)) - set(foreign))
    process.kill()
    await process.wait()
    image_host.whole.set()
    result = await _run(*args, "--resume", cwd=tmp_path)
    [record] = result.records
    assert (1, 0, True, sorted(foreign)) == (
        len(left),
        result.code,
        record["ok"],
        _part_files(out),
    ), result.out + result.err
