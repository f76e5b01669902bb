"""Upscaling behind an aiohttp.web endpoint.

    MONICA_API_KEY=... python examples/aiohttp_app.py
    curl -s localhost:8000/upscale -H 'content-type: application/json' \\
         -d '{"url": "https://example.com/cat.png"}'

- One ``MonicaClient`` for the application's lifetime, opened and closed by a
  ``cleanup_ctx``: one connection pool, one rate limiter, one set of stats.
- Monica's errors become statuses the caller can act on: a 429 becomes 503 with
  ``Retry-After``, a refused image 422, an upstream failure 502 (504 for a timeout).
- A caller that disconnects cancels its upscale: the server runs with
  ``handler_cancellation=True`` (off by default in aiohttp), so the handler, and the
  request to Monica inside it, is cancelled instead of being paid for and thrown away.

The client reads ``MONICA_API_KEY`` and ``MONICA_BASE_URL`` from the environment, so
the same code runs against the real service and against the fake server of
``monica_async.testing`` (``monica-upscale serve-fake``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections.abc import AsyncIterator
from typing import Any, cast

import attrs
from aiohttp import web

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

#: Longest a caller waits for a result: rate-limit waits and retries included.
REQUEST_BUDGET = 30.0
#: A web request cannot wait minutes: a few quick retries, and a Retry-After longer
#: than a few seconds is passed on to the caller instead of being slept through.
RETRY = RetryPolicy(max_attempts=3, max_retry_after=5.0, deadline=REQUEST_BUDGET)
#: Retry-After sent with a 503 when Monica's 429 did not say how long to wait.
DEFAULT_RETRY_AFTER = 5

MONICA = web.AppKey("monica", MonicaClient)

logger = logging.getLogger("aiohttp_app")


def error_response(exc: MonicaError) -> web.Response:
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
        return _error(502, "UpstreamError", "the upscaling service is unavailable")
    elif isinstance(exc, APITimeoutError):
        status = 504
    else:  # APIConnectionError, 5xx, a malformed answer: Monica failed.
        status = 502
    message = exc.message if isinstance(exc, APIStatusError | APIConnectionError) else str(exc)
    extra: dict[str, Any] = {}
    if isinstance(exc, APIStatusError) and exc.code:
        extra["code"] = exc.code
    request_id = getattr(exc, "request_id", None)
    if request_id:
        extra["request_id"] = request_id
    return _error(status, type(exc).__name__, message, headers=headers, **extra)


def _error(
    status: int, kind: str, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    body = {"error": {"type": kind, "message": message, **extra}}
    return web.json_response(body, status=status, headers=headers)


def result_json(result: UpscaleResult) -> dict[str, Any]:
    """The answer to a successful ``POST /upscale``."""
    return {
        "image": result.url,
        "source": result.source,
        "scale": result.scale,
        "attempts": result.attempts,
        "request_id": result.request_id,
    }


async def upscale(request: web.Request) -> web.Response:
    """``POST /upscale {"url": ...}``: upscale the image and return where the result is."""
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "InvalidJSON", 'send a JSON body such as {"url": "https://..."}')
    url = cast("dict[str, object]", body).get("url") if isinstance(body, dict) else None
    if not isinstance(url, str):
        return _error(422, "InvalidRequest", "'url' must be a string")
    client = request.app[MONICA]
    try:
        async with asyncio.timeout(REQUEST_BUDGET):
            result = await client.upscale(url)
    except TimeoutError:
        return _error(504, "Timeout", f"no result within {REQUEST_BUDGET:g} s")
    except MonicaError as exc:
        return error_response(exc)
    return web.json_response(result_json(result))


async def stats(request: web.Request) -> web.Response:
    """``GET /stats``: the Monica client's counters (calls, retries, 429s, in flight)."""
    return web.json_response(attrs.asdict(request.app[MONICA].stats))


async def monica_client(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one MonicaClient from startup to shutdown."""
    async with MonicaClient(retry=RETRY) as client:
        app[MONICA] = client
        yield


def create_app() -> web.Application:
    """Build the application."""
    app = web.Application()
    app.cleanup_ctx.append(monica_client)
    app.router.add_post("/upscale", upscale)
    app.router.add_get("/stats", stats)
    return app


async def serve(host: str, port: int) -> web.AppRunner:
    """Start the application on *host*:*port* (0: any free port); ``cleanup()`` stops it."""
    # handler_cancellation: a caller that disconnects cancels its handler, and with it
    # the request to Monica.
    runner = web.AppRunner(create_app(), handler_cancellation=True)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def main() -> None:
    """Serve until interrupted."""
    host, port = os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", "8000"))
    runner = await serve(host, port)
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
