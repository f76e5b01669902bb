"""examples/jobs: upscales as jobs on a streaq queue, run as a user runs them.

Everything is a real process or a real server on 127.0.0.1: redis-server, the fake
Monica server (in this test's event loop), ``python -m examples.jobs web`` and
``python -m examples.jobs worker`` processes. The jobs are seen through HTTP, as a
caller sees them, and the key's limit through the fake server's own counts.

Time scale: Monica's default key (10 a minute, 8 in flight) shrunk to 10 per 12 s,
with 0.4-0.8 s per call.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from monica_async.testing import API_PATH, FakeMonicaServer

if TYPE_CHECKING:
    from conftest_redis import RedisServer

pytest_plugins = ["conftest_redis"]
pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
KEY = "jobs-test-key"
REQUESTS, PER, IN_FLIGHT = 10, 12.0, 8
#: Seconds without a renewal after which a dead worker's jobs run elsewhere.
RECLAIM_AFTER = 5.0
#: Seconds a process gets to start, and a batch of jobs to end (generous: CI is slow).
START_TIMEOUT = 30.0
FINISH_TIMEOUT = 90.0
TERMINAL = frozenset({"done", "failed"})
ORDER = ["queued", "running", "done", "failed"]


def worst_window(times: list[float], per: float) -> int:
    """Most *times* inside any window ``[t, t + per)``."""
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, t + per) - i for i, t in enumerate(ordered)), default=0)


@attrs.define
class Process:
    """One ``python -m examples.jobs ...`` process, its output in a file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """Everything it printed so far, stdout and stderr."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    async def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> str:
        """Wait until the output contains *text*; return the line that does."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.output().splitlines():
                if text in line:
                    return line
            if self.popen.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{self.name} never printed {text!r}:\n{self.output()}")
            await asyncio.sleep(0.05)


@attrs.define
class Jobs:
    """Starts the example's processes with one environment; stops them all at the end."""

    directory: Path
    env: dict[str, str]
    processes: list[Process] = attrs.Factory(list)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Process:
        """Start ``python -m examples.jobs <args>``."""
        log = self.directory / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "examples.jobs", *args],
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    async def web(self) -> str:
        """Start the web front on a free port; return its base URL."""
        line = await self.start("web", "web", "--port", "0").wait_for("listening on ")
        return line.split("listening on ", 1)[1].strip()

    async def worker(
        self,
        name: str,
        *args: str,
        env: dict[str, str] | None = None,
        reclaim_after: float = RECLAIM_AFTER,
    ) -> Process:
        """Start a worker; return once it reads the queue."""
        reclaim = ("--reclaim-after", str(reclaim_after))
        process = self.start(name, "worker", *reclaim, *args, env=env)
        await process.wait_for("starting worker")
        return process

    def stop(self) -> None:
        """SIGTERM every process still running, then SIGKILL the ones that linger."""
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait()


@pytest.fixture
def jobs_env(redis_server: RedisServer) -> dict[str, str]:
    """The example's configuration: this test's Redis and the time-scaled key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONICA_", "REDIS_"))}
    return env | {
        "REDIS_URL": redis_server.url,
        "MONICA_API_KEY": KEY,
        "MONICA_RATE": f"{REQUESTS}/{PER:g}s",
        "MONICA_IN_FLIGHT": str(IN_FLIGHT),
    }


@pytest.fixture
def jobs(tmp_path: Path, jobs_env: dict[str, str]) -> Iterator[Jobs]:
    """A launcher of the example's processes; every one is stopped after the test."""
    launcher = Jobs(tmp_path, jobs_env)
    try:
        yield launcher
    finally:
        launcher.stop()


@pytest.fixture
async def monica() -> AsyncIterator[FakeMonicaServer]:
    """The fake server with the key's limits: 10 per 12 s, 8 in flight, 0.4-0.8 s a call."""
    server = FakeMonicaServer(
        api_key=KEY,
        process_images=False,
        rate_limit=(REQUESTS, PER),
        max_concurrency=IN_FLIGHT,
        latency=(0.4, 0.8),
        seed=25,
    )
    async with server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for calling the web front."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def submit(http: aiohttp.ClientSession, web_url: str, url: str) -> str:
    """``POST /jobs``; check the 202 and its Location; return the job's id."""
    async with http.post(f"{web_url}/jobs", json={"url": url}) as response:
        body = await response.json()
        assert 202 == response.status, body
        assert f"/jobs/{body['id']}" == response.headers["Location"]
    return str(body["id"])


async def job(http: aiohttp.ClientSession, web_url: str, job_id: str) -> dict[str, Any]:
    """``GET /jobs/{id}``, which must answer 200."""
    async with http.get(f"{web_url}/jobs/{job_id}") as response:
        assert 200 == response.status, await response.text()
        body: dict[str, Any] = await response.json()
    assert {"id", "status", "result", "error"} == set(body)
    assert job_id == body["id"]
    return body


@attrs.define
class Watch:
    """Every status each job showed, polled over HTTP; a finished job must stay as it ended."""

    http: aiohttp.ClientSession
    web_url: str
    ids: list[str]
    last: dict[str, dict[str, Any]] = attrs.Factory(dict)
    seen: dict[str, list[str]] = attrs.Factory(dict)

    async def poll(self) -> None:
        """Read every job once; check that no finished job changed."""
        bodies = await asyncio.gather(*(job(self.http, self.web_url, i) for i in self.ids))
        for body in bodies:
            before = self.last.get(body["id"])
            if before is not None and before["status"] in TERMINAL:
                assert before == body, f"a finished job changed: {before} -> {body}"
            self.last[body["id"]] = body
            history = self.seen.setdefault(body["id"], [])
            if not history or history[-1] != body["status"]:
                history.append(body["status"])

    def count(self, status: str) -> int:
        """Jobs whose last status was *status*."""
        return sum(body["status"] == status for body in self.last.values())

    async def until(self, condition: Callable[[Watch], bool], timeout: float) -> None:
        """Poll until *condition* holds."""
        deadline = time.monotonic() + timeout
        while True:
            await self.poll()
            if condition(self):
                return
            if time.monotonic() > deadline:
                pytest.fail(f"not met within {timeout} s: {self.seen}")
            await asyncio.sleep(0.2)


@pytest.mark.timeout(180)
async def test_a_burst_survives_a_killed_worker_within_the_keys_limit(
    jobs: Jobs, monica: FakeMonicaServer, http: aiohttp.ClientSession
) -> None:
    """20 jobs, two workers, one SIGKILLed mid-jobs and restarted: all done, once each.

    Submissions answer 202 at once; the killed worker's jobs run again elsewhere; each
    job ends ``done`` and stays so; the fake server never saw the key's limit broken
    (no 429, its worst 12 s window within 10, never more than 8 in flight), and at
    most the killed worker's jobs in flight were upscaled twice.
    """
    count, share = 20, IN_FLIGHT // 2
    env = {"MONICA_BASE_URL": monica.base_url}
    web_url = await jobs.web()
    w1 = await jobs.worker("w1", "--concurrency", str(share), env=env)
    await jobs.worker("w2", "--concurrency", str(share), env=env)
    urls = [f"https://img.example/burst/{n}.png" for n in range(count)]

    began = time.monotonic()
    ids = await asyncio.gather(*(submit(http, web_url, url) for url in urls))
    submitted = time.monotonic() - began
    assert count == len(set(ids))
    # Nothing waited on the key's limit: 20 jobs are two windows' worth.
    assert submitted < PER / 2, f"submitting took {submitted:.1f} s"

    watch = Watch(http, web_url, list(ids))
    await watch.until(lambda w: w.count("done") >= 3 and monica.stats.in_flight > 0, 60)
    w1.popen.send_signal(signal.SIGKILL)
    w1.popen.wait()
    await asyncio.sleep(1.0)
    await jobs.worker("w1-again", "--concurrency", str(share), env=env)
    await watch.until(lambda w: all(b["status"] in TERMINAL for b in w.last.values()), 90)
    for _ in range(3):  # finished jobs stay finished
        await watch.poll()

    stats = monica.stats
    assert count == watch.count("done"), watch.last
    for url, job_id in zip(urls, ids, strict=True):
        result = watch.last[job_id]["result"]
        assert result is not None
        assert result["url"].startswith(monica.base_url + "/results/"), result
        assert stats.attempts_by_image[url] >= 1
        # Forward only: no job went back to the queue once a worker had shown it running.
        history = watch.seen[job_id]
        assert sorted(history, key=ORDER.index) == history, history
        assert len(set(history)) == len(history), history
    # Only an upscale in flight at the killed worker is sent again.
    repeated = sum(n - 1 for n in stats.attempts_by_image.values())
    assert repeated <= share, stats.attempts_by_image
    assert count <= stats.accepted <= count + repeated
    assert 0 == stats.rate_limited + stats.concurrency_limited, stats.by_status
    assert worst_window(stats.request_times, PER) <= REQUESTS
    assert stats.peak_concurrency <= IN_FLIGHT


async def test_a_finished_job_stays_finished_when_stale_copies_come_up(
    jobs: Jobs, monica: FakeMonicaServer, http: aiohttp.ClientSession
) -> None:
    """Jobs that wait in a worker past ``--reclaim-after`` run elsewhere; nothing flips.

    With 2.5 s calls and a 1 s reclaim time, the job each worker holds in its prefetch
    buffer is claimed by the other worker, and the stale copy comes up after the job
    finished. streaq 7.2 then stores the failure "Task expired!" over the outcome; the
    example reads the outcome each job recorded, so every job stays ``done``.
    """
    monica.rate_limit = None
    monica.max_concurrency = None
    monica.latency = 2.5
    env = {"MONICA_BASE_URL": monica.base_url, "MONICA_RATE": "100/s"}
    web_url = await jobs.web()
    for name in ("a", "b"):
        await jobs.worker(name, "--concurrency", "1", env=env, reclaim_after=1.0)
    urls = [f"https://img.example/stale/{n}.png" for n in range(8)]
    ids = await asyncio.gather(*(submit(http, web_url, url) for url in urls))

    watch = Watch(http, web_url, list(ids))
    await watch.until(lambda w: all(b["status"] in TERMINAL for b in w.last.values()), 60)
    deadline = time.monotonic() + 4.0  # the stale copies come up after their jobs end
    while time.monotonic() < deadline:
        await watch.poll()
        await asyncio.sleep(0.2)

    assert len(ids) == watch.count("done"), watch.last
    for url in urls:
        assert monica.stats.attempts_by_image[url] >= 1


async def test_failures_are_final_and_readable(
    jobs: Jobs, monica: FakeMonicaServer, http: aiohttp.ClientSession
) -> None:
    """A bad URL and a refused key end their jobs ``failed``, type and message, no retry."""
    web_url = await jobs.web()
    env = {"MONICA_BASE_URL": monica.base_url, "MONICA_API_KEY": "not-the-key"}
    await jobs.worker("refused", "--concurrency", "2", env=env)
    bad = await submit(http, web_url, "ftp://img.example/a.png")
    refused = await submit(http, web_url, "https://img.example/refused.png")

    watch = Watch(http, web_url, [bad, refused])
    await watch.until(lambda w: all(b["status"] in TERMINAL for b in w.last.values()), 30)

    assert "failed" == watch.last[bad]["status"]
    assert watch.last[bad]["result"] is None
    assert "InvalidRequestError" == watch.last[bad]["error"]["type"]
    assert "ftp://img.example/a.png" in watch.last[bad]["error"]["message"]
    assert "failed" == watch.last[refused]["status"]
    assert "AuthenticationError" == watch.last[refused]["error"]["type"]
    assert "401" in watch.last[refused]["error"]["message"]
    # The bad URL never reached Monica; the refused key was tried once, not again.
    assert 1 == monica.stats.total
    assert {401: 1} == monica.stats.by_status


async def test_the_web_front_answers_what_it_cannot_take(
    jobs: Jobs, http: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    """Unknown ids 404, a body that is not JSON 400, no URL 422, Redis gone 503."""
    web_url = await jobs.web()
    for job_id in ("0" * 32, "not-an-id"):
        async with http.get(f"{web_url}/jobs/{job_id}") as response:
            assert 404 == response.status
            assert "NotFound" == (await response.json())["error"]["type"]
    async with http.post(f"{web_url}/jobs", data=b"{not json") as response:
        assert 400 == response.status
    for body in ({"image": "https://img.example/a.png"}, {"url": 3}, ["https://x"]):
        async with http.post(f"{web_url}/jobs", json=body) as response:
            assert 422 == response.status, body

    redis_server.stop()
    async with http.post(f"{web_url}/jobs", json={"url": "https://img.example/a.png"}) as r:
        assert 503 == r.status
        assert "QueueUnavailable" == (await r.json())["error"]["type"]
    async with http.get(f"{web_url}/jobs/{'0' * 32}") as response:
        assert 503 == response.status


async def test_an_exhausted_quota_ends_its_job_failed_without_retry(
    jobs: Jobs, http: aiohttp.ClientSession, answering_server: Any
) -> None:
    """Monica's quota 429 ends the job ``failed`` with the quota error, sent once."""
    calls: list[str] = []

    async def out_of_balance(request: web.Request) -> web.Response:
        calls.append(request.path)
        message = "You exceeded your current quota, please check your plan and billing details"
        body = {"error": {"code": "insufficient_quota", "message": message}}
        return web.json_response(body, status=429)

    base_url = await answering_server(API_PATH, out_of_balance)
    web_url = await jobs.web()
    await jobs.worker("quota", "--concurrency", "2", env={"MONICA_BASE_URL": base_url})
    job_id = await submit(http, web_url, "https://img.example/quota.png")

    watch = Watch(http, web_url, [job_id])
    await watch.until(lambda w: w.last[job_id]["status"] in TERMINAL, 30)

    assert "failed" == watch.last[job_id]["status"]
    assert "QuotaExceededError" == watch.last[job_id]["error"]["type"]
    assert [API_PATH] == calls


@pytest.fixture
async def answering_server() -> AsyncIterator[Callable[..., Any]]:
    """Serve one POST handler on 127.0.0.1; the factory returns the base URL."""
    runners: list[web.AppRunner] = []

    async def serve(path: str, handler: Callable[..., Any]) -> str:
        app = web.Application()
        app.router.add_post(path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    try:
        yield serve
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_a_batch_waits_for_every_job(
    jobs: Jobs, monica: FakeMonicaServer, tmp_path: Path
) -> None:
    """``batch`` enqueues a file of URLs and writes one outcome per URL, in input order."""
    monica.rate_limit = None
    monica.latency = None
    urls = [f"https://img.example/batch/{n}.png" for n in range(6)] + ["ftp://img.example/x"]
    source = tmp_path / "urls.txt"
    source.write_text("# a comment\n\n" + "\n".join(urls) + "\n", encoding="utf-8")
    env = {"MONICA_BASE_URL": monica.base_url, "MONICA_RATE": "100/s"}
    await jobs.worker("w", "--concurrency", "4", env=env)

    out = tmp_path / "out.jsonl"
    batch = jobs.start("batch", "batch", str(source), "--output", str(out))
    code = await asyncio.to_thread(batch.popen.wait, FINISH_TIMEOUT)

    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert 1 == code, batch.output()
    assert urls == [line["url"] for line in lines]
    assert ["done"] * 6 + ["failed"] == [line["status"] for line in lines]
    assert "InvalidRequestError" == lines[-1]["error"]["type"]
    assert "6 done, 1 failed" in batch.output()
    assert 6 == monica.stats.accepted


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("worker", "--concurrency", "9"), {}, "over the key's MONICA_IN_FLIGHT (8)"),
        (("worker",), {"MONICA_API_KEY": ""}, "set MONICA_API_KEY"),
        (("web",), {"MONICA_RATE": "ten a minute"}, "MONICA_RATE must look like"),
        (("web",), {"MONICA_IN_FLIGHT": "0"}, "MONICA_IN_FLIGHT must be an integer"),
    ],
)
def test_an_unusable_configuration_stops_with_status_2(
    jobs_env: dict[str, str], args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    """A command whose settings cannot work says which and exits 2 before doing anything."""
    done = subprocess.run(
        [sys.executable, "-m", "examples.jobs", *args],
        cwd=ROOT,
        env=jobs_env | env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    assert 2 == done.returncode, done.stderr
    assert message in done.stderr
