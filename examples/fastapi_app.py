"""Upscaling behind a FastAPI endpoint.

    MONICA_API_KEY=... python examples/fastapi_app.py
    curl -s localhost:8000/upscale -H 'content-type: application/json' \\
         -d '{"url": "https://example.com/cat.png"}'

- One ``MonicaClient`` for the application's lifetime (the lifespan): one connection
  pool, one rate limiter and one set of stats shared by every request.
- Monica's errors become statuses the caller can act on: a 429 becomes 503 with
  ``Retry-After``, a refused image 422, an upstream failure 502 (504 for a timeout).
- A caller that disconnects cancels its upscale: the request to Monica is abandoned
  instead of being paid for and thrown away.

The client reads ``MONICA_API_KEY`` and ``MONICA_BASE_URL`` from the environment, so
the same code runs against the real service and against the fake server of
``monica_async.testing`` (``monica-upscale serve-fake``). Needs the ``examples`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncGenerator, Awaitable
from typing import Any, TypeVar

import attrs
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from monica_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    InvalidRequestError,
    MonicaClient,
    MonicaError,
    PermissionDeniedError,
    RateLimitError,
    RateLimiterUnavailableError,
    RetryPolicy,
    UnprocessableEntityError,
    UpscaleResult,
)

T = TypeVar("T")

logger = logging.getLogger("fastapi_app")

#: Longest a caller waits for a result: rate-limit waits and retries included.
REQUEST_BUDGET = 30.0
#: A web request cannot wait minutes: a few quick retries, and a Retry-After longer
#: than a few seconds is passed on to the caller instead of being slept through.
RETRY = RetryPolicy(max_attempts=3, max_retry_after=5.0, deadline=REQUEST_BUDGET)
#: Retry-After sent with a 503 when Monica's 429 did not say how long to wait.
DEFAULT_RETRY_AFTER = 5
#: Logged (the caller is gone, nobody reads it) when a caller disconnects: nginx's code.
CLIENT_CLOSED_REQUEST = 499


class UpscaleRequest(BaseModel):
    """The body of ``POST /upscale``."""

    url: str


class CallerDisconnected(Exception):
    """The caller went away before the work was done."""


def error_response(exc: MonicaError) -> JSONResponse:
    """Map a monica-async error to the answer this service gives its own caller."""
    headers: dict[str, str] = {}
    if isinstance(exc, InvalidRequestError | BadRequestError | UnprocessableEntityError):
        # The caller's URL is unusable: refused before sending, or by Monica.
        status = 422
    elif isinstance(exc, RateLimitError):
        status = 503
        wait = exc.retry_after if exc.retry_after is not None else DEFAULT_RETRY_AFTER
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
    elif isinstance(exc, RateLimiterUnavailableError):
        status = 503
    elif isinstance(exc, AuthenticationError | PermissionDeniedError):
        # Our key, not the caller's request: say little, log loudly.
        logger.error("Monica refused this service's API key: %s", exc)
        return JSONResponse(
            {"error": {"type": "UpstreamError", "message": "the upscaling service is unavailable"}},
            status_code=502,
        )
    elif isinstance(exc, APITimeoutError):
        status = 504
    else:  # APIConnectionError, 5xx, a malformed answer: Monica failed.
        status = 502
    error: dict[str, Any] = {"type": type(exc).__name__, "message": _message(exc)}
    if isinstance(exc, APIStatusError) and exc.code:
        error["code"] = exc.code
    request_id = getattr(exc, "request_id", None)
    if request_id:
        error["request_id"] = request_id
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _message(exc: MonicaError) -> str:
    if isinstance(exc, APIStatusError | APIConnectionError):
        # The bare message: str(exc) adds the attempts and the request id (sent apart).
        return exc.message
    return str(exc)


def result_json(result: UpscaleResult) -> dict[str, Any]:
    """The answer to a successful ``POST /upscale``."""
    return {
        "image": result.url,
        "source": result.source,
        "scale": result.scale,
        "attempts": result.attempts,
        "request_id": result.request_id,
    }


async def _until_disconnected(request: Request) -> None:
    # The body has been read by now, so the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await *work*, cancelling it if the caller disconnects first.

    Starlette does not cancel a handler whose caller went away; without this, the
    upscale would run (and be billed) to the end for nobody.

    Raises:
        CallerDisconnected: The caller went away; *work* was cancelled.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.create_task(_until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            # Wait for the cancellation to reach the request to Monica.
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise CallerDisconnected
    return task.result()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncGenerator[None]:
    """Open one MonicaClient for the application's lifetime and close it at shutdown."""
    async with MonicaClient(retry=RETRY) as client:
        app.state.monica = client
        yield


def create_app() -> FastAPI:
    """Build the application."""
    app = FastAPI(title="upscaler", lifespan=lifespan)

    @app.post("/upscale")
    async def upscale(body: UpscaleRequest, request: Request) -> Response:
        """Upscale the image at ``url`` and return where the result is."""
        client: MonicaClient = request.app.state.monica
        try:
            async with asyncio.timeout(REQUEST_BUDGET):
                result = await cancel_on_disconnect(request, client.upscale(body.url))
        except CallerDisconnected:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except TimeoutError:
            message = f"no result within {REQUEST_BUDGET:g} s"
            return JSONResponse({"error": {"type": "Timeout", "message": message}}, status_code=504)
        except MonicaError as exc:
            return error_response(exc)
        return JSONResponse(result_json(result))

    @app.get("/stats")
    async def stats(request: Request) -> dict[str, Any]:
        """The Monica client's counters: calls, retries, 429s, attempts in flight."""
        client: MonicaClient = request.app.state.monica
        return attrs.asdict(client.stats)

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(
        app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "8000"))
    )
