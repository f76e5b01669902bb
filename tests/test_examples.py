"""The programs in examples/, run for real on 127.0.0.1 against the fake Monica server.

The web examples are served by a real server (uvicorn for FastAPI, an aiohttp
``AppRunner`` for aiohttp.web) and called over HTTP; the batch script runs as a
subprocess. All of them are configured the way a user configures them: through
``MONICA_API_KEY`` and ``MONICA_BASE_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import itertools
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from PIL import Image

from monica_async.testing import FakeMonicaServer, Fault

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
KEY = "example-test-key"

#: The examples this module runs; test_docs.py checks that pages only show these.
TESTED_EXAMPLES = ("aiohttp_app.py", "fastapi_app.py", "progress_batch.py")

_loaded: dict[str, ModuleType] = {}


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (not a package) as a module, once."""
    if name not in _loaded:
        spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _loaded[name] = module
    return _loaded[name]


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll *condition* until it holds; return the seconds it took, fail after *timeout*."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - began


@contextlib.asynccontextmanager
async def serve_fastapi() -> AsyncIterator[str]:
    """Serve a fresh examples/fastapi_app.py application with uvicorn; yield its URL."""
    import uvicorn

    app = load_example("fastapi_app").create_app()
    # ws="none": the app has no websockets, and uvicorn's websockets import warns.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", ws="none", http="h11"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            pytest.fail(f"uvicorn did not start: {task.exception()!r}")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def serve_aiohttp() -> AsyncIterator[str]:
    """Serve examples/aiohttp_app.py with its own ``serve()`` (an AppRunner); yield its URL."""
    runner = await load_example("aiohttp_app").serve("127.0.0.1", 0)
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


SERVERS = {"fastapi": serve_fastapi, "aiohttp": serve_aiohttp}


@pytest.fixture(params=sorted(SERVERS))
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the web example under test."""
    return str(request.param)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeMonicaServer]:
    """A fake Monica server that the examples find through the environment."""
    async with FakeMonicaServer(api_key=KEY) as server:
        monkeypatch.setenv("MONICA_API_KEY", KEY)
        monkeypatch.setenv("MONICA_BASE_URL", server.base_url)
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """The caller of the web examples."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


@pytest.fixture
async def app_url(backend: str, fake: FakeMonicaServer) -> AsyncIterator[str]:
    """The running web example's base URL (started after the fake server's env is set)."""
    async with SERVERS[backend]() as url:
        yield url


async def post_upscale(
    http: aiohttp.ClientSession, app_url: str, url: object
) -> tuple[int, dict[str, str], Any]:
    """``POST /upscale {"url": url}``; return the status, headers and JSON body."""
    async with http.post(f"{app_url}/upscale", json={"url": url}) as response:
        return response.status, dict(response.headers), await response.json()


async def app_stats(http: aiohttp.ClientSession, app_url: str) -> dict[str, Any]:
    """The example's ``GET /stats``: its MonicaClient's counters."""
    async with http.get(f"{app_url}/stats") as response:
        assert 200 == response.status
        stats: dict[str, Any] = await response.json()
        return stats


# -- the web examples ---------------------------------------------------------------


async def test_upscale_returns_the_result(
    fake: FakeMonicaServer, http: aiohttp.ClientSession, app_url: str
) -> None:
    """POST /upscale answers 200 with the result's URL, which holds the picture at 2x."""
    source = fake.sample_image(40, 30)

    status, _, body = await post_upscale(http, app_url, source)

    assert 200 == status
    assert source == body["source"]
    assert 2 == body["scale"]
    assert 1 == body["attempts"]
    assert body["request_id"]
    async with http.get(body["image"]) as response:
        picture = Image.open(io.BytesIO(await response.read()))
    assert (80, 60) == picture.size


async def test_one_client_serves_every_request(
    fake: FakeMonicaServer, http: aiohttp.ClientSession, app_url: str
) -> None:
    """Requests share the client opened at startup: its counters add up across them."""
    source = fake.sample_image(8, 8)

    for _ in range(3):
        status, _, _ = await post_upscale(http, app_url, source)
        assert 200 == status

    stats = await app_stats(http, app_url)
    assert (3, 3, 0) == (stats["requests"], stats["succeeded"], stats["in_flight"])


@pytest.mark.parametrize(
    ("faults", "retry_after", "status", "kind", "header"),
    [
        # Monica's Retry-After (30 s) is over the example's max_retry_after: passed on.
        ([Fault.HTTP_429], 30.0, 503, "RateLimitError", "30"),
        # No Retry-After at all, three times: the example's default is sent.
        ([Fault.HTTP_429_NO_RETRY_AFTER] * 3, 1.0, 503, "RateLimitError", "5"),
        ([Fault.HTTP_500] * 3, 1.0, 502, "InternalServerError", None),
        ([Fault.HTTP_502] * 3, 1.0, 502, "InternalServerError", None),
        ([Fault.DROP] * 3, 1.0, 502, "APIConnectionError", None),
        ([Fault.MALFORMED_NO_IMAGE], 1.0, 502, "APIResponseValidationError", None),
    ],
)
@pytest.mark.usefixtures("no_retry_sleep")
async def test_upstream_errors_become_statuses(
    fake: FakeMonicaServer,
    http: aiohttp.ClientSession,
    app_url: str,
    faults: list[Fault],
    retry_after: float,
    status: int,
    kind: str,
    header: str | None,
) -> None:
    """Monica's failures map to 503 + Retry-After (429) or 502 (upstream broken)."""
    fake.retry_after = retry_after
    fake.queue_faults(faults)

    actual_status, headers, body = await post_upscale(http, app_url, fake.sample_image(8, 8))

    assert status == actual_status
    assert kind == body["error"]["type"]
    assert header == headers.get("Retry-After")
    assert len(faults) == fake.stats.total


async def test_a_refused_image_is_422_with_monicas_code(
    fake: FakeMonicaServer, http: aiohttp.ClientSession, app_url: str
) -> None:
    """Monica's 400 about the image (here: it cannot be downloaded) is the caller's 422."""
    missing = f"{fake.base_url}/images/missing.png"

    status, _, body = await post_upscale(http, app_url, missing)

    assert 422 == status
    assert "BadRequestError" == body["error"]["type"]
    assert "image_download_failed" == body["error"]["code"]
    assert body["error"]["request_id"].startswith("req-")


@pytest.mark.parametrize("url", ["not a url", "/relative.png", "ftp://host/a.png"])
async def test_an_invalid_url_is_422_before_any_request(
    fake: FakeMonicaServer, http: aiohttp.ClientSession, app_url: str, url: str
) -> None:
    """A URL the client refuses is answered 422 and never reaches Monica."""
    status, _, body = await post_upscale(http, app_url, url)

    assert 422 == status
    assert "InvalidRequestError" == body["error"]["type"]
    assert 0 == fake.stats.total


async def test_a_refused_key_is_a_502_that_says_little(
    fake: FakeMonicaServer,
    http: aiohttp.ClientSession,
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Our own key being refused is not the caller's business: 502, no details."""
    monkeypatch.setenv("MONICA_API_KEY", "sk-wrong-key-SECRET")
    async with SERVERS[backend]() as url:
        status, _, body = await post_upscale(http, url, fake.sample_image(8, 8))

    assert 502 == status
    assert {"type": "UpstreamError", "message": "the upscaling service is unavailable"} == (
        body["error"]
    )
    assert 1 == fake.stats.auth_failures


async def test_a_slow_upscale_is_cut_at_the_request_budget(
    fake: FakeMonicaServer,
    http: aiohttp.ClientSession,
    backend: str,
    app_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An upscale slower than REQUEST_BUDGET answers 504, and Monica's request is dropped."""
    monkeypatch.setattr(load_example(f"{backend}_app"), "REQUEST_BUDGET", 0.3)
    fake.latency = 10.0

    status, _, body = await post_upscale(http, app_url, fake.sample_image(8, 8))

    assert 504 == status
    assert "Timeout" == body["error"]["type"]
    await wait_for(lambda: fake.stats.disconnected == 1)


async def test_a_caller_that_disconnects_cancels_the_upscale(
    fake: FakeMonicaServer, http: aiohttp.ClientSession, app_url: str
) -> None:
    """When the caller hangs up, the request to Monica is abandoned, not run to the end.

    Monica (the fake) is made slow; the caller gives up while the upscale is in
    flight. The fake server sees its request abandoned long before the latency ends,
    and the example's client has nothing left in flight.
    """
    fake.latency = 10.0
    call = asyncio.create_task(post_upscale(http, app_url, fake.sample_image(8, 8)))
    await wait_for(lambda: fake.stats.in_flight == 1)

    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    took = await wait_for(lambda: fake.stats.disconnected == 1)

    assert took < 5.0
    assert 0 == fake.stats.accepted
    stats = await app_stats(http, app_url)
    assert (1, 0, 0) == (stats["requests"], stats["succeeded"], stats["in_flight"])


async def test_aiohttp_example_refuses_a_body_without_url(
    fake: FakeMonicaServer, http: aiohttp.ClientSession
) -> None:
    """The aiohttp example checks its own input: no JSON is 400, no ``url`` is 422."""
    async with serve_aiohttp() as url:
        async with http.post(f"{url}/upscale", data=b"{") as response:
            assert 400 == response.status
        status, _, body = await post_upscale(http, url, 42)

    assert 422 == status
    assert "InvalidRequest" == body["error"]["type"]
    assert 0 == fake.stats.total


# -- the batch script ------------------------------------------------------------------


async def run_batch_script(
    fake: FakeMonicaServer | None, tmp_path: Path, urls: list[str], *args: str, key: str = KEY
) -> tuple[int, str, str, list[dict[str, Any]]]:
    """Run examples/progress_batch.py in a subprocess; return code, stdout, stderr, results."""
    listing = tmp_path / "urls.txt"
    listing.write_text("# images\n\n" + "\n".join(urls) + "\n", encoding="utf-8")
    results = tmp_path / "results.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONICA_")}
    env["MONICA_API_KEY"] = key
    if fake is not None:
        env["MONICA_BASE_URL"] = fake.base_url
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "progress_batch.py"),
        str(listing),
        "--output",
        str(results),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    out, err = await asyncio.wait_for(process.communicate(), 45)
    assert process.returncode is not None
    lines = results.read_text(encoding="utf-8").splitlines() if results.exists() else []
    return process.returncode, out.decode(), err.decode(), [json.loads(line) for line in lines]


async def test_batch_script_upscales_every_url(fake: FakeMonicaServer, tmp_path: Path) -> None:
    """Every URL of the list is upscaled once: exit 0, one result line each, a summary."""
    urls = [fake.sample_image(8 + i, 8, name=f"p{i}.png") for i in range(6)]

    code, out, err, results = await run_batch_script(fake, tmp_path, urls, "--concurrency", "3")

    assert 0 == code, err
    assert "6 succeeded, 0 failed" in out
    assert sorted(urls) == sorted(r["source"] for r in results)
    assert all(r["ok"] and r["image"].startswith(fake.base_url) for r in results)
    assert 6 == fake.stats.accepted
    assert "upscaling" in err  # the progress bar, on stderr


async def test_batch_script_reports_failures_and_exits_1(
    fake: FakeMonicaServer, tmp_path: Path
) -> None:
    """A URL that cannot be upscaled is listed with its error and the exit status is 1."""
    good = fake.sample_image(8, 8)
    missing = f"{fake.base_url}/images/missing.png"

    code, out, _, results = await run_batch_script(fake, tmp_path, [good, missing])

    assert 1 == code
    assert "1 succeeded, 1 failed" in out
    assert f"#1 {missing}: HTTP 400 image_download_failed" in out
    failed = [r for r in results if not r["ok"]]
    assert [missing] == [r["source"] for r in failed]
    assert failed[0]["error"].startswith("BadRequestError: HTTP 400")


async def test_batch_script_respects_its_rate(fake: FakeMonicaServer, tmp_path: Path) -> None:
    """``--rate 120/min`` paces starts 0.5 s apart, as the server sees them."""
    urls = [fake.sample_image(8, 8, name=f"r{i}.png") for i in range(3)]

    code, _, err, _ = await run_batch_script(fake, tmp_path, urls, "--rate", "120/min")

    assert 0 == code, err
    times = sorted(fake.stats.accepted_times)
    assert all(later - earlier >= 0.45 for earlier, later in itertools.pairwise(times))


async def test_batch_script_without_a_key_exits_2(tmp_path: Path) -> None:
    """No API key: one error line naming the variable, exit 2, nothing sent."""
    code, _out, err, results = await run_batch_script(
        None, tmp_path, ["https://example.com/a.png"], key=""
    )

    assert 2 == code
    assert "MONICA_API_KEY" in err
    assert "Traceback" not in err
    assert [] == results
