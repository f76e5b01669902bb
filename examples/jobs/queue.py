"""The job queue: streaq on Redis, one task (``upscale``), and what a job looks like.

Every process builds the same queue with :func:`job_queue`: the web front and the
batch command only enqueue and read, a worker also runs the jobs. streaq keeps each
job in a Redis stream read by a consumer group; a worker renews its claim on the jobs
it runs, so a job whose worker died (SIGKILL, a lost machine) is claimed by another
worker once ``reclaim_after`` seconds pass without a renewal, and runs again.

Each job's outcome is recorded by the job itself, in a Redis key of its own that the
first write fills (:class:`Outcomes`), and read from there first: streaq stores an
outcome too, but can later store a spurious failure over it (see :class:`Outcomes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any, Final, Literal

import attrs
from coredis.tokens import PureToken
from streaq import TaskStatus, Worker
from streaq.task import AsyncRegisteredTask, TaskResult

from monica_async import MonicaClient, MonicaError, RedisRateLimit

from .settings import Settings, limit_name

#: The stream (and key prefix) of the jobs; web, batch and workers must agree on it.
QUEUE_NAME: Final = "monica-upscale"
#: Where each job's own record of its outcome lives: ``<prefix><job id>``.
OUTCOME_PREFIX: Final = f"{QUEUE_NAME}:outcome:"
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

logger = logging.getLogger("examples.jobs")

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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        """Rebuild a job from :meth:`to_json`."""
        return cls(data["id"], data["status"], result=data["result"], error=data["error"])

    def to_json(self) -> dict[str, Any]:
        """``{"id", "status", "result", "error"}``."""
        return attrs.asdict(self)

    def unwrap(self) -> dict[str, str]:
        """The result of a done job; raise :class:`JobFailed` for a failed one."""
        if self.error is not None:
            raise JobFailed(self.error["type"], self.error["message"])
        assert self.result is not None, f"job {self.id} has not finished"
        return self.result


@attrs.frozen
class Outcomes:
    """Each job's outcome as the job recorded it: the first record stays, for a day.

    streaq stores each job's outcome too, but may store a false one over it: when a
    job waited in a worker's prefetch buffer longer than ``reclaim_after``, another
    worker runs it, and when the first worker then takes its stale copy, streaq finds
    the job's data gone and stores the failure "Task expired!" over the real outcome
    (streaq 7.2; reproduced with two workers and buffered waits past the timeout).
    The record also lets a copy of a finished job return its outcome unsent.
    """

    redis: Any  # the queue's coredis client: worker.redis

    async def get(self, job_id: str) -> Job | None:
        """The recorded outcome of job *job_id*, if it has one."""
        raw = await self.redis.get(OUTCOME_PREFIX + job_id)
        return None if raw is None else Job.from_json(json.loads(raw))

    async def record(self, job: Job) -> Job:
        """Record *job*'s outcome unless one is recorded already; return the one that is."""
        raw = json.dumps(job.to_json())
        key = OUTCOME_PREFIX + job.id
        before = await self.redis.set(key, raw, condition=PureToken.NX, get=True, ex=RESULT_TTL)
        return job if before is None else Job.from_json(json.loads(before))


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
        recorded = await Outcomes(self.worker.redis).get(job_id)
        if recorded is not None:
            return recorded
        # No record: not finished, or failed outside the job (its timeout, its tries).
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
        outcome = await self.worker.result_by_id(job_id)
        recorded = await Outcomes(self.worker.redis).get(job_id)
        return recorded if recorded is not None else Job.finished(outcome)


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

    # The jobs this process runs, by id. streaq can hand a worker a job it is already
    # running: an entry that waited in the worker's prefetch buffer past reclaim_after
    # is reclaimed by the worker's own next read while the first copy starts. The
    # second copy joins the first instead of upscaling again.
    running: dict[str, asyncio.Task[Job]] = {}

    async def upscale(url: str) -> dict[str, str]:
        """Upscale *url* under the key's shared limit; every failure is final."""
        job_id = registered.context.task_id
        run = running.get(job_id)
        if run is None:
            run = running[job_id] = asyncio.ensure_future(_run(worker, job_id, url))
            run.add_done_callback(lambda _: running.pop(job_id, None))
        job = await run
        return job.unwrap()

    register = worker.task(max_tries=MAX_TRIES, timeout=JOB_TIMEOUT, ttl=RESULT_TTL, name="upscale")
    registered: AsyncRegisteredTask[[str], dict[str, str]] = register(upscale)
    return JobQueue(worker, registered)


async def _run(worker: Worker[Any], job_id: str, url: str) -> Job:
    """Upscale *url* for job *job_id* unless the job has an outcome; record it."""
    outcomes = Outcomes(worker.redis)
    recorded = await outcomes.get(job_id)
    if recorded is not None:
        # A copy of a job that ended: its worker died after recording the outcome.
        return recorded
    state: WorkerState = worker.context
    try:
        result = await state.client.upscale(url)
    except Exception as exc:
        # The client has retried what was worth retrying (a refused key, a bad URL or
        # an exhausted balance are not), so the job ends here: streaq runs a job again
        # only when its worker died, never because it raised.
        if not isinstance(exc, MonicaError):  # not Monica's answer: a bug, keep its trace
            logger.exception("job %s: %s", job_id, type(exc).__name__)
        failure = JobFailed.from_exception(exc)
        job = Job(job_id, "failed", error={"type": failure.kind, "message": failure.message})
    else:
        job = Job(job_id, "done", result={"url": result.url})
    return await outcomes.record(job)


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
