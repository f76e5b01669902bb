"""Every error monica-async raises, under one base class.

The tree::

    MonicaError
    ├── InvalidRequestError            (also a ValueError; raised before any request)
    ├── RateLimiterUnavailableError    (a shared limiter's store could not be reached)
    ├── StorageError                   (an object store refused or failed: s3://, gs://, az://)
    └── APIError
        ├── APIConnectionError
        │   └── APITimeoutError
        ├── APIResponseValidationError (a 200 whose body breaks the contract)
        └── APIStatusError             (any answer that is not 200)
            ├── BadRequestError            400
            ├── AuthenticationError        401
            ├── PermissionDeniedError      403
            ├── NotFoundError              404
            ├── ConflictError              409
            ├── UnprocessableEntityError   422
            ├── RateLimitError             429 (sending too fast: pace, then retry)
            ├── QuotaExceededError         429 (the balance is spent: never retried)
            └── InternalServerError        >= 500

The two 429s are told apart by :func:`is_quota_exhausted`, the one place that reads
Monica's quota wording.

Messages never contain the API key, a storage credential or a presigned URL's query.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "InternalServerError",
    "InvalidRequestError",
    "MonicaError",
    "NotFoundError",
    "PermissionDeniedError",
    "QuotaExceededError",
    "RateLimitError",
    "RateLimiterUnavailableError",
    "StorageError",
    "UnprocessableEntityError",
]

BODY_EXCERPT_LIMIT = 500


def excerpt(text: str, limit: int = BODY_EXCERPT_LIMIT) -> str:
    """Shorten *text* to *limit* characters for messages and attributes."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"... ({len(text) - limit} more characters)"


class MonicaError(Exception):
    """Base class of every error raised by monica-async."""


class InvalidRequestError(MonicaError, ValueError):
    """An argument is invalid; raised before any byte is sent."""


class RateLimiterUnavailableError(MonicaError):
    """A shared rate limiter could not reach its store, so no request was sent."""


class StorageError(MonicaError):
    """An object store operation failed: reading an input, staging a file or writing a result.

    The store's client has already retried what was worth retrying; nothing was left
    half-written (a result is either a complete object or absent).

    Attributes:
        message: What went wrong and what to check, for people.
        url: The object URL concerned (``s3://bucket/key``), never a presigned URL.
        operation: ``"read"``, ``"stage"``, ``"write"`` or ``"check"``.
    """

    def __init__(self, message: str, *, url: str = "", operation: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.operation = operation

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.message,), self.__dict__


class APIError(MonicaError):
    """A request was attempted and did not produce a valid result.

    Attributes:
        message: What went wrong, for people.
        method: HTTP method of the failed request.
        url: URL of the failed request (never contains credentials).
        attempts: How many attempts were made, retries included.
        request_id: The server's request id, when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str = "POST",
        url: str = "",
        attempts: int = 1,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message: str = message
        self.method: str = method
        self.url: str = url
        self.attempts: int = attempts
        self.request_id: str | None = request_id

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default reduce calls cls(*args), which loses the keyword-only
        # arguments (and fails for APIStatusError): rebuild, then restore the attributes.
        return _rebuild, (type(self), self.message), self.__dict__

    def __str__(self) -> str:
        extras: list[str] = []
        if self.request_id:
            extras.append(f"request_id={self.request_id}")
        if self.attempts > 1:
            extras.append(f"after {self.attempts} attempts")
        if not extras:
            return self.message
        return f"{self.message} ({', '.join(extras)})"


def _rebuild(cls: type[APIError], message: str) -> APIError:
    """Unpickle an :class:`APIError`; its attributes are restored afterwards."""
    error = cls.__new__(cls)
    error.args = (message,)
    return error


class APIConnectionError(APIError):
    """The server could not be reached, or the connection broke.

    Attributes:
        reused_connection: The request failed on a kept-alive connection before any
            byte of an answer came (the server may have closed it while it sat idle):
            it is sent again at once rather than after a backoff, and still counts as
            an attempt, since the server may have received it.
    """

    reused_connection: bool = False


class APITimeoutError(APIConnectionError):
    """An attempt took longer than its timeout."""


class APIResponseValidationError(APIError):
    """The server answered 200 with a body that does not match the contract.

    Attributes:
        status: The HTTP status (200).
        body: An excerpt of the body.
    """

    def __init__(
        self, message: str, *, status: int = 200, body: str = "", **kwargs: object
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.status: int = status
        self.body: str = excerpt(body)


class APIStatusError(APIError):
    """The server answered with a status other than 200.

    Attributes:
        status: The HTTP status code.
        code: The ``error.code`` of the body, when the body has one.
        body: An excerpt of the body as received.
        retry_after: Seconds the server asked to wait (``Retry-After``), if any.
    """

    status_code: ClassVar[int | None] = None

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        body: str = "",
        retry_after: float | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.status: int = status
        self.code: str | None = code
        self.body: str = excerpt(body)
        self.retry_after: float | None = retry_after

    def __str__(self) -> str:
        code = f" {self.code}" if self.code else ""
        return f"HTTP {self.status}{code}: {super().__str__()}"


class BadRequestError(APIStatusError):
    """400: the server rejected the request."""

    status_code: ClassVar[int | None] = 400


class AuthenticationError(APIStatusError):
    """401: the API key is missing or wrong."""

    status_code: ClassVar[int | None] = 401


class PermissionDeniedError(APIStatusError):
    """403: the API key may not use this endpoint."""

    status_code: ClassVar[int | None] = 403


class NotFoundError(APIStatusError):
    """404: the endpoint (or the image) was not found."""

    status_code: ClassVar[int | None] = 404


class ConflictError(APIStatusError):
    """409: the request conflicts with another one (retried)."""

    status_code: ClassVar[int | None] = 409


class UnprocessableEntityError(APIStatusError):
    """422: the request was well formed but could not be processed."""

    status_code: ClassVar[int | None] = 422


class RateLimitError(APIStatusError):
    """429: too many requests for this key; ``retry_after`` says how long to wait."""

    status_code: ClassVar[int | None] = 429


class QuotaExceededError(APIStatusError):
    """429 for want of balance: the key's quota is spent; no retry can help.

    Monica words it "You exceeded your current quota, please check your plan and
    billing details". Unlike :class:`RateLimitError` it is never retried and does not
    slow the rate limiter down; in a batch it stops the sending, as a refused key
    does: the inputs not yet sent get this error without a request. Top the balance
    up, then send what failed again.
    """

    status_code: ClassVar[int | None] = 429


class InternalServerError(APIStatusError):
    """A 5xx answer: the server failed."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    cls.status_code: cls
    for cls in (
        BadRequestError,
        AuthenticationError,
        PermissionDeniedError,
        NotFoundError,
        ConflictError,
        UnprocessableEntityError,
        RateLimitError,
    )
    if cls.status_code is not None
}


#: Error codes of a spent balance: Monica's is not published; this is the usual one.
_QUOTA_CODES: Final = frozenset({"insufficient_quota", "quota_exceeded", "insufficient_balance"})
#: Phrases of a spent balance, lower case: Monica's wording first.
_QUOTA_PHRASES: Final = (
    "exceeded your current quota",
    "check your plan and billing",
    "insufficient_quota",
    "insufficient quota",
    "insufficient balance",
)


def is_quota_exhausted(code: str | None, message: str | None) -> bool:
    """Tell whether a 429's error *code* or *message* says the balance is spent.

    Either is enough, in any case and spacing: Monica documents the message ("You
    exceeded your current quota, please check your plan and billing details") but
    not the code, which is ``insufficient_quota`` on platforms using that wording.
    """
    if code and code.strip().casefold() in _QUOTA_CODES:
        return True
    text = " ".join((message or "").casefold().split())
    return any(phrase in text for phrase in _QUOTA_PHRASES)


def status_error_class(
    status: int, code: str | None = None, message: str | None = None
) -> type[APIStatusError]:
    """Return the most specific error class for an HTTP *status* and its error body."""
    if status >= 500:
        return InternalServerError
    if status == 429 and is_quota_exhausted(code, message):
        return QuotaExceededError
    return _BY_STATUS.get(status, APIStatusError)
