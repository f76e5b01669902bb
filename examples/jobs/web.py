"""The web front: ``POST /jobs`` enqueues an upscale, ``GET /jobs/{id}`` tells how it went.

It never calls Monica and never waits on the key's limit: a submission is one write
to Redis, answered ``202 Accepted`` with the job's id at once, however many jobs
are waiting. The workers (``python -m examples.jobs worker``) do the upscaling.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from aiohttp import web
from coredis.exceptions import RedisError

from .queue import JobQueue, job_queue
from .settings import Settings

logger = logging.getLogger("examples.jobs.web")

QUEUE = web.AppKey("queue", JobQueue)
#: What a call to Redis raises when Redis cannot be reached or fails.
QUEUE_ERRORS = (RedisError, OSError, TimeoutError)


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


def _unavailable(exc: BaseException) -> web.Response:
    logger.error("the job queue failed: %s: %s", type(exc).__name__, exc)
    return _error(503, "QueueUnavailable", "the job queue cannot be reached; try again")


async def submit(request: web.Request) -> web.Response:
    """``POST /jobs {"url": ...}``: 202 ``{"id": ...}``, with the job's URL in Location."""
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "InvalidJSON", 'send a JSON body such as {"url": "https://..."}')
    url = cast("dict[str, Any]", body).get("url") if isinstance(body, dict) else None
    if not isinstance(url, str):
        return _error(422, "InvalidRequest", "'url' must be a string")
    # The URL itself is checked by the worker's client, before it sends anything: a bad
    # one ends its job failed, with the client's own message.
    try:
        job_id = await request.app[QUEUE].submit(url)
    except QUEUE_ERRORS as exc:
        return _unavailable(exc)
    location = str(request.app.router["job"].url_for(id=job_id))
    return web.json_response({"id": job_id}, status=202, headers={"Location": location})


async def status(request: web.Request) -> web.Response:
    """``GET /jobs/{id}``: ``{"id", "status", "result", "error"}``; 404 for an unknown id."""
    job_id = request.match_info["id"]
    try:
        job = await request.app[QUEUE].job(job_id)
    except QUEUE_ERRORS as exc:
        return _unavailable(exc)
    if job is None:
        return _error(404, "NotFound", f"no job {job_id!r} (unknown, or expired)")
    return web.json_response(job.to_json())


def create_app(settings: Settings) -> web.Application:
    """The application, connected to the queue from startup to shutdown."""

    async def queue_ctx(app: web.Application) -> AsyncIterator[None]:
        queue = job_queue(settings)
        async with queue.worker:
            app[QUEUE] = queue
            yield

    app = web.Application()
    app.cleanup_ctx.append(queue_ctx)
    app.router.add_post("/jobs", submit)
    app.router.add_get("/jobs/{id}", status, name="job")
    return app


async def serve(settings: Settings, host: str, port: int) -> web.AppRunner:
    """Start the application on *host*:*port* (0: any free port); ``cleanup()`` stops it."""
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
