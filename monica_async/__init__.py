"""monica-async: an asyncio client for the Monica Open API Upscale endpoint.

Quick start::

    from monica_async import MonicaClient

    async with MonicaClient() as client:  # reads MONICA_API_KEY
        result = await client.upscale("https://example.com/cat.png")
        await client.download(result, "cat@2x.png")
"""

from ._client import MonicaClient
from ._config import USE_CLIENT_DEFAULT, Limits, RetryPolicy
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    InvalidRequestError,
    MonicaError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitError,
    RateLimiterUnavailableError,
    StorageError,
    UnprocessableEntityError,
)
from ._logs import configure_from_environment as _configure_logging
from ._models import Outcome, UpscaleResult
from ._ratelimit import AdaptiveRateLimit, RateLimit, RateLimiter
from ._redis import RedisRateLimit
from ._retry import set_testing
from ._stats import ClientStats
from ._validation import ALLOWED_SCALES
from ._version import __version__

__all__ = [
    "ALLOWED_SCALES",
    "USE_CLIENT_DEFAULT",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AdaptiveRateLimit",
    "AuthenticationError",
    "BadRequestError",
    "ClientStats",
    "ConflictError",
    "InternalServerError",
    "InvalidRequestError",
    "Limits",
    "MonicaClient",
    "MonicaError",
    "NotFoundError",
    "Outcome",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimit",
    "RateLimitError",
    "RateLimiter",
    "RateLimiterUnavailableError",
    "RedisRateLimit",
    "RetryPolicy",
    "StorageError",
    "UnprocessableEntityError",
    "UpscaleResult",
    "__version__",
    "set_testing",
]

# MONICA_LOG=info|debug shows the library's log records on stderr.
_configure_logging()
