"""Scenarios that combine a limiter, a concurrency, a server and a latency, judged from
the server's side.

Each scenario runs the fake Monica server in its own process, a redis-server when the
limiter is shared, and one to three client processes (``_worker.py``) that start
together. What the server saw decides:

- **window**: the most attempts that reached the server in any window of the limit
  (with a Redis outage: before it, at the kill, during it, and from the restart on),
  within the scenario's bound;
- **one outcome per input**: every input a process took got exactly one outcome;
- **attempts**: no input reached the server more often than ``max_attempts`` (4);
- **no false outage**: no "Redis is unavailable" in a process's log while Redis was up;
- **nothing hung**: every process finished before the deadline.

The test suite runs a reduced set (``tests/test_combinations.py``); the benchmark
``combinations`` runs them all and prints a table (``bench_combinations.py``).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from ._common import FakeServer, Json

__all__ = ["RedisProcess", "Scenario", "Verdict", "redis_binary", "run_scenario"]

WORKER = Path(__file__).with_name("_worker.py")
NO_RETRY_AFTER = Path(__file__).with_name("_fake_no_retry_after.py")
#: The client's default RetryPolicy.max_attempts.
MAX_ATTEMPTS = 4
#: What a limiter logs when it takes Redis for gone.
OUTAGE_TEXT = "Redis is unavailable"


def redis_binary() -> str | None:
    """The redis-server to run: ``$REDIS_SERVER``, else the one on ``PATH``."""
    return shutil.which(os.environ.get("REDIS_SERVER") or "redis-server")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisProcess:
    """A throwaway redis-server on a loopback port, persistence off, that can be killed
    (SIGKILL, as a crash) and started again empty on the same port."""

    def __init__(self, binary: str, directory: str) -> None:
        self.binary = binary
        self.directory = directory
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", self.directory, "--loglevel", "warning"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not _pong(self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.kill()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def kill(self) -> None:
        """Kill the server: its connections break at once, its data is lost."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def _redis(binary: str) -> Iterator[RedisProcess]:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisProcess(binary, directory)
        server.start()
        try:
            yield server
        finally:
            server.kill()


@attrs.frozen(kw_only=True)
class Scenario:
    """One combination: the server, the client in each process, what bounds the window.

    Attributes:
        label: How the table names it.
        server: Options of the fake server (``python -m monica_async.testing``).
        client: The worker spec of each process (see ``_worker.py``): ``limiter``,
            ``requests``, ``per``, ``concurrency``, ``limits``...
        processes: Client processes (a ``redis`` limiter is shared by all of them).
        images: Inputs per process; or *seconds*: inputs taken for that long.
        outage: Seconds after the go at which redis-server is killed and restarted.
        bound: Most attempts allowed in any window of *per* seconds at the server
            (``None``: nothing bounds it but the server).
        switch_bound: The same for windows around a Redis outage's kill and restart.
        deadline: Seconds after the go by which every process must have finished.
        retry_after: Whether the server's 429s say when to come back.
    """

    label: str
    server: tuple[str, ...] = ()
    client: Json = attrs.field(factory=dict)
    processes: int = 1
    images: int | None = None
    seconds: float | None = None
    outage: tuple[float, float] | None = None
    bound: int | None = None
    switch_bound: int | None = None
    per: float = 1.0
    deadline: float = 120.0
    retry_after: bool = True

    @property
    def redis(self) -> bool:
        """Whether the scenario needs a redis-server."""
        return self.client.get("limiter") == "redis"


@attrs.frozen(kw_only=True)
class Verdict:
    """What one run of a scenario showed, and what of it breaks the rules."""

    scenario: Scenario
    wall: float
    inputs: int
    failed: int
    one_outcome_each: bool
    most_attempts: int
    windows: dict[str, int]
    false_outages: int
    hung: int
    accepted: int
    refused: int
    concurrency_peak: int
    concurrency_final: int
    reasons: list[str]
    errors: dict[str, int]

    @property
    def refused_per_accepted(self) -> float:
        """429s per accepted request, as the server counted them."""
        return self.refused / max(1, self.accepted)

    def problems(self) -> list[str]:
        """Each rule the run broke, in words (empty: it held)."""
        s = self.scenario
        found = []
        if not self.one_outcome_each:
            found.append("an input did not get exactly one outcome")
        if self.most_attempts > MAX_ATTEMPTS:
            found.append(f"an input reached the server {self.most_attempts} times")
        if self.false_outages:
            found.append(f"{self.false_outages} false Redis outage(s) logged")
        if self.hung:
            found.append(f"{self.hung} process(es) hung")
        for phase, worst in self.windows.items():
            bound = s.switch_bound if phase in ("at the kill", "from the restart") else s.bound
            if bound is not None and worst > bound:
                found.append(f"worst window {phase} {worst} > {bound}")
        return found


def _worst(
    times: Sequence[float], per: float, low: float = -math.inf, high: float = math.inf
) -> int:
    """Most *times* in a window ``[t, t + per)`` whose start *t* is in ``(low, high]``."""
    return max(
        (bisect.bisect_left(times, t + per) - i for i, t in enumerate(times) if low < t <= high),
        default=0,
    )


def _windows(
    s: Scenario, times: Sequence[float], kill: float | None, back: float | None
) -> dict[str, int]:
    per = s.per
    if kill is None or back is None:
        return {"overall": _worst(times, per)}
    return {
        "before the outage": _worst(times, per, high=kill - per),
        "at the kill": _worst(times, per, kill - per, kill + per),
        "during the outage": _worst(times, per, kill + per, back - per),
        "from the restart": _worst(times, per, back - per),
    }


def _spec(s: Scenario, n: int, base_url: str, redis_url: str | None, key: str) -> Json:
    spec = {**s.client, "base_url": base_url, "name": f"w{n}", "key": key}
    if redis_url is not None:
        spec["redis_url"] = redis_url
    if s.images is not None:
        spec["images"] = s.images
    if s.seconds is not None:
        spec["seconds"] = s.seconds
    return spec


def _start(spec: Json) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _collect(processes: list[subprocess.Popen[str]], until: float) -> tuple[list[Json], int]:
    """Each process's report (``{}`` for one killed at *until*), and how many hung."""
    reports: list[Json] = []
    hung = 0
    for process in processes:
        try:
            out, err = process.communicate(timeout=max(0.1, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            hung += 1
            reports.append({})
            continue
        lines = out.strip().splitlines()
        if process.returncode != 0 or not lines:
            raise RuntimeError(f"a worker failed ({process.returncode}): {err[-2000:]}")
        reports.append(json.loads(lines[-1]))
    return reports, hung


def _outage(
    s: Scenario, redis: RedisProcess | None, go: float
) -> tuple[float | None, float | None]:
    """Kill and restart redis-server at the scenario's moments (in a thread)."""
    if s.outage is None or redis is None:
        return None, None
    moments: dict[str, float] = {}
    kill_at, back_at = s.outage

    def run() -> None:
        time.sleep(max(0.0, go + kill_at - time.monotonic()))
        moments["kill"] = time.monotonic()
        redis.kill()
        time.sleep(max(0.0, go + back_at - time.monotonic()))
        moments["back"] = time.monotonic()
        redis.start()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(back_at + 30)
    return moments.get("kill"), moments.get("back")


def run_scenario(s: Scenario) -> Verdict:
    """Run *s* once and judge it."""
    program = (str(NO_RETRY_AFTER),) if not s.retry_after else ("-m", "monica_async.testing")
    with contextlib.ExitStack() as stack:
        redis = None
        if s.redis:
            binary = redis_binary()
            if binary is None:
                raise RuntimeError("redis-server not found: install it or set REDIS_SERVER")
            redis = stack.enter_context(_redis(binary))
        server = stack.enter_context(FakeServer(*s.server, program=program))
        key = uuid.uuid4().hex
        specs = [
            _spec(s, n, server.base_url, None if redis is None else redis.url, key)
            for n in range(s.processes)
        ]
        processes = [_start(spec) for spec in specs]
        try:
            for process in processes:
                assert process.stdout is not None
                if process.stdout.readline().strip() != "READY":
                    raise RuntimeError(
                        f"a worker did not start: {process.stderr and process.stderr.read()}"
                    )
            server.reset()
            go = time.monotonic()
            for process in processes:
                assert process.stdin is not None
                process.stdin.write("go\n")
                process.stdin.flush()
            kill, back = _outage(s, redis, go)
            reports, hung = _collect(processes, go + s.deadline)
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        stats = server.stats()
    return _judge(s, reports, hung, stats, go, kill, back)


def _judge(
    s: Scenario,
    reports: list[Json],
    hung: int,
    stats: Any,
    go: float,
    kill: float | None,
    back: float | None,
) -> Verdict:
    times = sorted(stats.request_times)
    inputs = failed = 0
    one_each = True
    errors: dict[str, int] = {}
    false_outages = 0
    ended = go
    for report in reports:
        if not report:
            continue
        indexes = sorted(index for index, _ in report["outcomes"])
        one_each = one_each and indexes == list(range(len(indexes)))
        inputs += len(indexes)
        for _, error in report["outcomes"]:
            if error is not None:
                failed += 1
                errors[error] = errors.get(error, 0) + 1
        ended = max(ended, report["ended"])
        for at, _, message in report["logs"]:
            outage = kill is not None and kill - 0.5 <= at <= (back or math.inf) + 5
            if OUTAGE_TEXT in message and not outage:
                false_outages += 1
    done = [r for r in reports if r]
    return Verdict(
        scenario=s,
        wall=ended - go,
        inputs=inputs,
        failed=failed,
        one_outcome_each=one_each,
        most_attempts=max(stats.attempts_by_image.values(), default=0),
        windows=_windows(s, times, kill, back),
        false_outages=false_outages,
        hung=hung,
        accepted=stats.accepted,
        refused=stats.by_status.get(429, 0),
        concurrency_peak=max((r["concurrency_peak"] for r in done), default=0),
        concurrency_final=max((r["concurrency_final"] for r in done), default=0),
        reasons=[r["concurrency_reason"] for r in done],
        errors=errors,
    )
