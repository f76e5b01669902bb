"""Benchmark examples/jobs: a burst of jobs, two workers, one SIGKILLed mid-run and restarted.

It starts its own redis-server (loopback, persistence off), the fake Monica server with
a time-scaled default key (10 per 12 s, 8 in flight, 0.4-0.8 s a call), the web front
and two workers (``python -m examples.jobs``), then:

1. submits the jobs at once (``POST /jobs``, all in parallel) and times each answer;
2. SIGKILLs the first worker once a quarter of the jobs are done, at a moment when one
   of its upscales is in flight at the server (the worst case), and starts it again a
   second later;
3. polls ``GET /jobs/{id}`` until every job is done or failed.

Printed: submit latency (median, p95, max), the time from the first submission to the
last job finished (next to the key's own floor for that many upscales), the fake
server's worst window and most requests in flight, its 429s, and how many upscales
were sent twice (a second request for the same image).

    python -m benchmarks.bench_jobs [--jobs 40] [--rate 10/12s] [--in-flight 8]

Needs the ``examples`` extra (streaq, redis) and a ``redis-server`` binary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks._common import FakeServer, worst_window
from benchmarks.bench_redis import redis_server
from examples.jobs.queue import default_reclaim_after
from examples.jobs.settings import Settings, parse_rate

ROOT = Path(__file__).resolve().parent.parent
POLL = 0.1
START_TIMEOUT = 30.0


class Jobs:
    """The example's processes, their output in files of *directory*."""

    def __init__(self, directory: str, env: dict[str, str]) -> None:
        self.directory = Path(directory)
        self.env = env
        self.processes: list[subprocess.Popen[bytes]] = []

    def log(self, name: str) -> Path:
        """Where the output of process *name* goes."""
        return self.directory / f"{name}.log"

    def start(self, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
        """Start ``python -m examples.jobs <args>``."""
        log = self.log(name)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "examples.jobs", *args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process, log

    async def started(
        self, name: str, text: str, *args: str
    ) -> tuple[subprocess.Popen[bytes], str]:
        """Start a process and wait for the line of its output that contains *text*."""
        process, log = self.start(name, *args)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            for line in log.read_text(errors="replace").splitlines():
                if text in line:
                    return process, line
            await asyncio.sleep(0.05)
        sys.exit(f"{name} did not start:\n{log.read_text(errors='replace')}")

    def stop(self) -> None:
        """SIGTERM the processes still running; SIGKILL those that linger."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def jobs_processes(env: dict[str, str], logs: Path | None) -> Iterator[Jobs]:
    """A launcher whose processes are all stopped at the end; logs kept in *logs*."""
    with tempfile.TemporaryDirectory() as directory:
        jobs = Jobs(str(logs or directory), env)
        try:
            yield jobs
        finally:
            jobs.stop()


async def submit(http: aiohttp.ClientSession, web_url: str, url: str) -> tuple[str, float]:
    """``POST /jobs``: the job's id and the seconds the answer took."""
    began = time.monotonic()
    async with http.post(f"{web_url}/jobs", json={"url": url}) as response:
        body = await response.json()
        if response.status != 202:
            sys.exit(f"POST /jobs answered {response.status}: {body}")
    return str(body["id"]), time.monotonic() - began


async def jobs_now(
    http: aiohttp.ClientSession, web_url: str, ids: list[str]
) -> dict[str, dict[str, Any]]:
    """Each job, as ``GET /jobs/{id}`` shows it."""

    async def one(job_id: str) -> tuple[str, dict[str, Any]]:
        async with http.get(f"{web_url}/jobs/{job_id}") as response:
            return job_id, await response.json()

    return dict(await asyncio.gather(*(one(job_id) for job_id in ids)))


def busy_job(log: Path, url_of: dict[str, str], monica: FakeServer, jobs: dict[str, Any]) -> bool:
    """Whether a job the worker of *log* started has its upscale in flight at the server."""
    started = {
        line.split(" □ ", 1)[1].split()[0] for line in log.read_text().splitlines() if " □ " in line
    }
    sent = monica.stats().attempts_by_image
    return any(jobs[i]["status"] == "running" and sent.get(url_of[i]) for i in started)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """One run of the scenario; the figures."""
    requests, per = parse_rate(args.rate)
    settings = Settings(requests=requests, per=per, in_flight=args.in_flight)
    reclaim_after = default_reclaim_after(settings)
    share = str(max(1, args.in_flight // 2))
    limits = ["--rate-limit", args.rate, "--max-concurrency", str(args.in_flight)]
    # A key of this run's own: on a shared machine, a stray client of another run that
    # reaches this fake server is refused (401) instead of counting against the limit.
    api_key = f"bench-jobs-{uuid.uuid4().hex[:8]}"
    with (
        redis_server() as redis,
        FakeServer(*limits, "--latency", "0.4,0.8", "--api-key", api_key) as monica,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MONICA_", "REDIS_"))}
        env |= {
            "REDIS_URL": redis.url,
            "MONICA_API_KEY": api_key,
            "MONICA_BASE_URL": monica.base_url,
            "MONICA_RATE": args.rate,
            "MONICA_IN_FLIGHT": str(args.in_flight),
        }
        with jobs_processes(env, args.logs) as jobs:
            _, line = await jobs.started("web", "listening on ", "web", "--port", "0")
            web_url = line.split("listening on ", 1)[1].strip()
            worker = ("worker", "--concurrency", share, "--reclaim-after", f"{reclaim_after:g}")
            w1, _ = await jobs.started("w1", "starting worker", *worker)
            await jobs.started("w2", "starting worker", *worker)
            urls = [f"https://img.example/jobs/{n}.png" for n in range(args.jobs)]
            async with aiohttp.ClientSession() as http:
                began = time.monotonic()
                submitted = await asyncio.gather(*(submit(http, web_url, u) for u in urls))
                url_of = {job_id: url for (job_id, _), url in zip(submitted, urls, strict=True)}
                killed_at: float | None = None
                restart: asyncio.Task[Any] | None = None
                while True:
                    current = await jobs_now(http, web_url, list(url_of))
                    if all(j["status"] in ("done", "failed") for j in current.values()):
                        finished = time.monotonic() - began
                        break
                    quarter = sum(j["status"] == "done" for j in current.values()) >= args.jobs / 4
                    if (
                        killed_at is None
                        and quarter
                        and busy_job(jobs.log("w1"), url_of, monica, current)
                    ):
                        # SIGKILL while one of its upscales is in flight: the worst case.
                        w1.send_signal(signal.SIGKILL)
                        w1.wait()
                        killed_at = time.monotonic() - began
                        restart = asyncio.create_task(_restart(jobs, worker))
                    await asyncio.sleep(POLL)
                if restart is not None:
                    await restart
            stats = monica.stats()
    latencies = sorted(seconds for _, seconds in submitted)
    counts = {s: sum(j["status"] == s for j in current.values()) for s in ("done", "failed")}
    errors = sorted(
        {f"{j['error']['type']}: {j['error']['message']}" for j in current.values() if j["error"]}
    )
    return {
        "jobs": args.jobs,
        "rate": args.rate,
        "in_flight": args.in_flight,
        "reclaim_after": reclaim_after,
        "submit_p50": statistics.median(latencies),
        "submit_p95": latencies[max(0, round(0.95 * len(latencies)) - 1)],
        "submit_max": latencies[-1],
        "killed_at": killed_at,
        "last_job": finished,
        "floor": (args.jobs - 1) * per / requests,
        "worst_window": worst_window(stats.request_times, per),
        "peak_in_flight": stats.peak_concurrency,
        "rate_limited": stats.rate_limited + stats.concurrency_limited,
        "answers": dict(sorted(stats.by_status.items())),
        # A second request for an image: the killed worker's upscale in flight, sent
        # again by another worker (the fake server abandons the first one when its
        # connection closes; Monica may finish, and bill, it).
        "repeated": sum(count - 1 for count in stats.attempts_by_image.values()),
        "answered_twice": stats.accepted - args.jobs,
        "abandoned": stats.disconnected,
        "errors": errors,
        **counts,
    }


async def _restart(jobs: Jobs, worker: tuple[str, ...]) -> None:
    await asyncio.sleep(1.0)
    await jobs.started("w1-again", "starting worker", *worker)


def report(figures: dict[str, Any]) -> str:
    """The figures as a small table."""
    rows = [
        ("jobs (two workers, one SIGKILLed once)", f"{figures['jobs']}"),
        ("key", f"{figures['rate']}, {figures['in_flight']} in flight"),
        ("reclaim after", f"{figures['reclaim_after']:g} s"),
        (
            "submit latency p50 / p95 / max",
            f"{figures['submit_p50'] * 1000:.0f} / {figures['submit_p95'] * 1000:.0f} / "
            f"{figures['submit_max'] * 1000:.0f} ms",
        ),
        ("worker killed at", f"{figures['killed_at']:.1f} s"),
        (
            "last job finished",
            f"{figures['last_job']:.1f} s (the key's pace alone: {figures['floor']:.1f} s)",
        ),
        ("done / failed", f"{figures['done']} / {figures['failed']}"),
        ("server's worst window", f"{figures['worst_window']} (limit {figures['rate']})"),
        ("server's most in flight", f"{figures['peak_in_flight']} (limit {figures['in_flight']})"),
        ("429s", f"{figures['rate_limited']}"),
        ("server's answers by status", f"{figures['answers']}"),
        (
            "upscales repeated",
            f"{figures['repeated']} sent twice ({figures['abandoned']} abandoned by the killed "
            f"worker, {figures['answered_twice']} answered twice)",
        ),
    ]
    rows += [("failure", error) for error in figures["errors"]]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main() -> None:
    """Run the scenario and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--rate", default="10/12s", help="the key's rate (10/12s)")
    parser.add_argument("--in-flight", type=int, default=8, help="the key's in-flight cap (8)")
    parser.add_argument("--runs", type=int, default=1, help="runs, one after another")
    parser.add_argument("--logs", type=Path, help="keep the processes' output in this folder")
    args = parser.parse_args()
    logs = args.logs
    for number in range(1, args.runs + 1):
        if args.runs > 1:
            print(f"run {number} of {args.runs}")
        if logs is not None:
            args.logs = logs / f"run-{number}"
            args.logs.mkdir(parents=True, exist_ok=True)
        print(report(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
