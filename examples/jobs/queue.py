"""The job queue: streaq on Redis, one task (``upscale``), and what a job looks like.

Every process builds the same queue with :func:`job_queue`: the web front and the
batch command only enqueue and read, a worker also runs the jobs. streaq keeps each
job in a Redis stream read by a consumer group; a worker renews its claim on the jobs
it runs, so a job whose worker died (SIGKILL, a lost machine) is claimed by another
worker once ``reclaim_after`` seconds pass without a renewal, and runs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any, Final, Literal

import attrs
from streaq import TaskStatus, Worker
from streaq.task import AsyncRegisteredTask, TaskResult

from monica_async import MonicaClient, RedisRateLimit

from .settings import Settings, limit_name

#: The stream (and key prefix) of the jobs; web, batch and workers must agree on it.
QUEUE_NAME: Final = "monica-upscale"
#: How long a finished job's status and result stay readable.
RESULT_TTL: Final = timedelta(days=1)
#: Hand-outs of one job to a worker at most, then it fails. streaq counts each, the
#: duplicate hand-outs that ``upscale`` absorbs included: this leaves room for those and
#: for a few workers dying under the same job, and still stops a job that kills them.
MAX_TRIES: Final = 5
#: A safety net over one job; the client's own limits (5 min of retries by default,
#: 2 min per attempt) end it well before, limiter waits included.
JOB_TIMEOUT: Final = timedelta(minutes=15)
#: Least ``reclaim_after``: a worker renews its claims every 0.9 of it, and a renewal
#: that comes late (a slow Redis, a busy machine) would hand a live job to another worker.
MIN_RECLAIM_AFTER: Final = 10.0
#: Seconds a worker told to stop (SIGTERM, Ctrl-C) gives its running jobs to finish;
#: the jobs still running then go back to the queue.
DEFAULT_GRACE: Final = 30
#: Longest wait for a result the status already says is there.
_READ_TIMEOUT: Final = 5
_JOB_ID: Final = re.compile(r"[0-9a-f]{32}", re.ASCII)

JobStatus = Literal["queued", "running", "done", "failed"]


class JobFailed(Exception):
    """Why a job failed: the error's type and message, stored as the job's result.

    The upscale's own exception is not stored: a plain pair of strings reads back in
    any process, whatever that process can import.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    @classmethod
    def from_exception(cls, exc: BaseException) -> JobFailed:
        """The type's name and the message of *exc*."""
        return cls(type(exc).__name__, str(exc))

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@attrs.frozen
class Job:
    """A job as ``GET /jobs/{id}`` and the batch command show it."""

    id: str
    status: JobStatus
    result: dict[str, str] | None = None
    error: dict[str, str] | None = None

    @classmethod
    def finished(cls, outcome: TaskResult[Any]) -> Job:
        """The job a stored outcome describes: ``done`` with its result, or ``failed``."""
        if outcome.success:
            return cls(outcome.task_id, "done", result=dict(outcome.result))
        exc = outcome.exception
        failure = exc if isinstance(exc, JobFailed) else JobFailed.from_exception(exc)
        error = {"type": failure.kind, "message": failure.message}
        return cls(outcome.task_id, "failed", error=error)

    def to_json(self) -> dict[str, Any]:
        """``{"id", "status", "result", "error"}``."""
        return attrs.asdict(self)


@attrs.frozen
class WorkerState:
    """What a running worker's jobs share: one client, under the key's shared limit."""

    client: MonicaClient


@attrs.frozen
class JobQueue:
    """The queue, seen from any process: enqueue, read, wait; and the task workers run."""

    worker: Worker[Any]
    upscale: AsyncRegisteredTask[[str], dict[str, str]]

    async def submit(self, url: str) -> str:
        """Enqueue an upscale of *url*; return the job's id. Never waits on the limit."""
        task = await self.upscale.enqueue(url)
        return task.id

    async def submit_many(self, urls: Sequence[str]) -> list[str]:
        """Enqueue an upscale of each of *urls* in one round trip; return the ids in order."""
        tasks = [self.upscale.enqueue(url) for url in urls]
        await self.worker.enqueue_many(tasks)
        return [task.id for task in tasks]

    async def job(self, job_id: str) -> Job | None:
        """The job *job_id* as it stands, or ``None`` for an unknown (or expired) id."""
        if not _JOB_ID.fullmatch(job_id):
            return None
        status = await self.worker.status_by_id(job_id)
        if status is TaskStatus.DONE:
            try:
                outcome = await self.worker.result_by_id(job_id, timeout=_READ_TIMEOUT)
            except TimeoutError:  # expired between the two reads
                return None
            return Job.finished(outcome)
        if status is TaskStatus.RUNNING:
            return Job(job_id, "running")
        if status in (TaskStatus.QUEUED, TaskStatus.SCHEDULED):
            return Job(job_id, "queued")
        return None

    async def wait(self, job_id: str) -> Job:
        """Wait until job *job_id* is done or failed; return it."""
        return Job.finished(await self.worker.result_by_id(job_id))


def default_reclaim_after(settings: Settings) -> float:
    """Seconds without a renewal after which a worker's jobs count as lost.

    A job can wait in a worker, before it runs, about as long as the key takes to start
    the upscales of every job running ahead of it: ``in_flight`` starts at the key's
    pace. Twice that keeps the jobs of live workers where they are (10/min and 8 in
    flight: 96 s), and a dead worker's jobs run again within about twice as long.
    """
    return max(MIN_RECLAIM_AFTER, 2 * settings.in_flight * settings.per / settings.requests)


def job_queue(
    settings: Settings,
    *,
    concurrency: int = 1,
    reclaim_after: float = MIN_RECLAIM_AFTER,
    grace: int = DEFAULT_GRACE,
    lifespan: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
) -> JobQueue:
    """Build the queue on ``settings.redis_url``; enter ``queue.worker`` to connect.

    Args:
        settings: The shared configuration.
        concurrency: Jobs this process runs at once (workers only).
        reclaim_after: Seconds after which another worker takes over the jobs of a
            worker that stopped renewing them. Every worker should use the same value.
        grace: Seconds a stopping worker gives its running jobs.
        lifespan: What a worker opens for its jobs (:func:`monica_worker_state`).
    """
    options: dict[str, Any] = {} if lifespan is None else {"lifespan": lifespan}
    worker: Worker[Any] = Worker(
        redis_url=settings.redis_url,
        queue_name=QUEUE_NAME,
        concurrency=concurrency,
        # A worker holds one job beyond those it runs: the others stay in the stream
        # for whichever worker frees up first.
        prefetch=1,
        idle_timeout=reclaim_after,
        grace_period=grace,
        **options,
    )

    # The upscales this process runs, by job id. streaq can hand a worker a job it is
    # already running: an entry that waited in the worker's prefetch buffer past
    # reclaim_after is reclaimed by the worker's own next read, while the first copy
    # starts. The second copy joins the first instead of upscaling again.
    running: dict[str, asyncio.Task[dict[str, str]]] = {}

    async def upscale(url: str) -> dict[str, str]:
        """Upscale *url* under the key's shared limit; every failure is final."""
        job_id = registered.context.task_id
        run = running.get(job_id)
        if run is None:
            run = running[job_id] = asyncio.ensure_future(_upscale(worker.context, url))
            run.add_done_callback(lambda _: running.pop(job_id, None))
        return await run

    register = worker.task(max_tries=MAX_TRIES, timeout=JOB_TIMEOUT, ttl=RESULT_TTL, name="upscale")
    registered: AsyncRegisteredTask[[str], dict[str, str]] = register(upscale)
    return JobQueue(worker, registered)


async def _upscale(state: WorkerState, url: str) -> dict[str, str]:
    try:
        result = await state.client.upscale(url)
    except Exception as exc:
        # The client has retried what was worth retrying (a refused key, a bad URL or
        # an exhausted balance are not), so the job ends here: streaq runs a job again
        # only when its worker died, never because it raised.
        raise JobFailed.from_exception(exc) from exc
    return {"url": result.url}


@contextlib.asynccontextmanager
async def monica_worker_state(
    settings: Settings, api_key: str, concurrency: int
) -> AsyncIterator[WorkerState]:
    """One ``MonicaClient`` for the worker's life, under the key's limit shared in Redis.

    The client reads ``MONICA_BASE_URL`` from the environment; it never has more than
    *concurrency* upscales in flight.
    """
    limit = RedisRateLimit(
        settings.redis_url, settings.requests, settings.per, key=limit_name(api_key)
    )
    async with (
        limit,
        MonicaClient(api_key, rate_limit=limit, max_concurrency=concurrency) as client,
    ):
        yield WorkerState(client)
