"""The public API used the way a user would, for ``mypy --strict`` (see test_typing.py).

Nothing here runs a request: the functions only exist to be type-checked, and
``assert_type`` pins what each call returns.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import assert_type

import aiohttp

import monica_async
from monica_async import (
    ALLOWED_SCALES,
    USE_CLIENT_DEFAULT,
    APIConnectionError,
    APIError,
    APIStatusError,
    ClientStats,
    InvalidRequestError,
    MonicaClient,
    MonicaError,
    Outcome,
    QuotaExceededError,
    RateLimit,
    RateLimiter,
    RateLimitError,
    RetryPolicy,
    StorageError,
    UpscaleResult,
)


async def single_call() -> Path:
    """Upscale one image and save it."""
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.2, deadline=None)
    async with MonicaClient(
        "key",
        base_url="https://openapi.monica.im",
        timeout=aiohttp.ClientTimeout(total=60),
        retry=policy,
        max_concurrency=8,
        rate_limit=RateLimit(60, per=60.0),
        headers={"X-Team": "imaging"},
    ) as client:
        assert_type(client, MonicaClient)
        result = await client.upscale("https://example.com/cat.png", scale=ALLOWED_SCALES[0])
        assert_type(result, UpscaleResult)
        assert_type(result.url, str)
        assert_type(result.attempts, int)
        assert_type(result.elapsed, float)
        assert_type(result.request_id, str | None)
        again = await client.upscale(result.source, timeout=5.0, retry=USE_CLIENT_DEFAULT)
        assert_type(again.scale, int)
        path = await client.download(result, Path("out") / "cat@2x.png", max_bytes=10_000_000)
        assert_type(path, Path)
        # A string may be an object URL ("s3://bucket/key.png"), returned as given.
        assert_type(await client.download(result.url, "cat.png", timeout=None), Path | str)
        local = await client.upscale(Path("photos") / "cat.png")
        assert_type(local.source, str)
        assert_type(client.stats, ClientStats)
        assert_type(client.closed, bool)
        return path


async def handle_errors(client: MonicaClient) -> str:
    """Catch the library's errors by class and read their attributes."""
    try:
        await client.upscale("https://example.com/cat.png")
    except InvalidRequestError as exc:
        assert_type(exc, InvalidRequestError)
        return str(exc)
    except RateLimitError as exc:
        assert_type(exc.retry_after, float | None)
        return f"wait {exc.retry_after}"
    except QuotaExceededError as exc:
        assert_type(exc.status, int)
        return f"top the balance up: {exc.message}"
    except APIStatusError as exc:
        assert_type(exc.status, int)
        assert_type(exc.code, str | None)
        assert_type(exc.body, str)
        return exc.message
    except APIConnectionError as exc:
        assert_type(exc.attempts, int)
        return exc.url
    except APIError as exc:
        assert_type(exc.request_id, str | None)
        return exc.method
    except StorageError as exc:
        assert_type(exc.url, str)
        return exc.operation
    except MonicaError:
        return "other"
    return "ok"


async def batch(client: MonicaClient, urls: list[str]) -> list[str]:
    """Run a batch both ways: streamed and collected."""
    done: list[str] = []
    stream = client.upscale_many(urls, ordered=True, workers=4)
    async with contextlib.aclosing(stream):
        async for outcome in stream:
            assert_type(outcome, Outcome)
            if outcome.ok:
                assert_type(outcome.result, UpscaleResult)
                done.append(outcome.result.url)
            else:
                assert_type(outcome.error, MonicaError)
    outcomes = await client.upscale_all(urls)
    assert_type(outcomes, list[Outcome])
    return done


async def injected_session() -> None:
    """Use a session of one's own; the client leaves it open."""
    limiter: RateLimiter = monica_async.AdaptiveRateLimit()
    async with aiohttp.ClientSession() as session:
        client = MonicaClient(session=session, rate_limit=limiter, allow_insecure_http=True)
        await client.upscale("https://example.com/cat.png")
        await client.aclose()


async def files_and_buckets(folder: Path) -> list[str]:
    """Objects and local files in, results written to a bucket."""
    async with MonicaClient(staging="s3://bucket/tmp/", stores={}) as client:
        result = await client.upscale("s3://bucket/in/cat.png")
        where = await client.download(result, "s3://bucket/out/cat.png")
        assert_type(where, Path | str)
        images: list[str | Path] = [*folder.glob("*.png"), "s3://bucket/in/dog.png"]
        return [o.source for o in await client.upscale_all(images)]


def retry_statuses() -> list[RetryPolicy]:
    """Any iterable of ints sets the statuses to retry; the policy keeps a frozenset."""
    policies = [
        RetryPolicy(retry_statuses={429, 503}),
        RetryPolicy(retry_statuses=frozenset({429})),
        RetryPolicy(retry_statuses=[500, 502, 503]),
        RetryPolicy(retry_statuses=range(500, 505)),
        RetryPolicy(retry_statuses=(s for s in (429, 503))),
    ]
    assert_type(policies[0].retry_statuses, frozenset[int])
    return policies


def testing_mode() -> None:
    """Switch retry waits off in one's own tests."""
    monica_async.set_testing(True)
    assert_type(monica_async.__version__, str)
