"""Values returned by the client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ._exceptions import APIResponseValidationError, InvalidRequestError, MonicaError, excerpt
from ._validation import validate_image_url

__all__ = ["Outcome", "UpscaleResult", "result_from_answer"]


@attrs.frozen(kw_only=True)
class UpscaleResult:
    """One successful upscale.

    Attributes:
        url: URL of the upscaled image; download it promptly, it may expire.
        source: The image URL that was sent.
        scale: The scale factor that was sent.
        attempts: How many attempts it took (1 when there was no retry).
        elapsed: Seconds from the first attempt to the answer, waits included.
        request_id: The server's request id, when it sent one.
    """

    url: str
    source: str
    scale: int
    attempts: int = 1
    elapsed: float = 0.0
    request_id: str | None = None

    @classmethod
    def from_response(
        cls,
        payload: Any,
        *,
        source: str,
        scale: int,
        attempts: int,
        elapsed: float,
        request_id: str | None,
        raw: str = "",
    ) -> UpscaleResult:
        """Build a result from a decoded 200 body, checking it against the contract.

        Raises:
            APIResponseValidationError: The body is not ``{"image": "<URL>"}`` with an
                absolute http(s) URL.
        """
        return result_from_answer(payload, source, scale, attempts, elapsed, request_id, raw)


def result_from_answer(
    payload: Any,
    source: str,
    scale: int,
    attempts: int,
    elapsed: float,
    request_id: str | None,
    raw: str,
) -> UpscaleResult:
    """:meth:`UpscaleResult.from_response` with positional arguments (the client's call)."""
    if not isinstance(payload, Mapping):
        raise APIResponseValidationError(
            f"expected a JSON object with an 'image' URL, got {type(payload).__name__}: "
            f"{excerpt(raw, 100)!r}",
            body=raw,
            attempts=attempts,
            request_id=request_id,
        )
    image = payload.get("image")
    if not isinstance(image, str) or not image.strip():
        raise APIResponseValidationError(
            f"expected 'image' to be a non-empty string URL, got {excerpt(raw, 100)!r}",
            body=raw,
            attempts=attempts,
            request_id=request_id,
        )
    try:
        validate_image_url(image)
    except InvalidRequestError:
        # The server broke the contract, not the caller, whom download() would blame.
        raise APIResponseValidationError(
            f"expected 'image' to be an absolute http(s) URL, got {excerpt(image, 100)!r}",
            body=raw,
            attempts=attempts,
            request_id=request_id,
        ) from None
    return UpscaleResult(
        url=image,
        source=source,
        scale=scale,
        attempts=attempts,
        elapsed=elapsed,
        request_id=request_id,
    )


def _one_of_result_and_error(outcome: Outcome, attribute: attrs.Attribute[Any], value: Any) -> None:
    if (outcome._result is None) == (value is None):
        raise InvalidRequestError("an Outcome takes exactly one of result= and error=")


@attrs.frozen(kw_only=True, repr=False)
class Outcome:
    """What became of one input of a batch: a result or an error, never both.

    Test :attr:`ok` first, then read :attr:`result` (when ``ok``) or :attr:`error`
    (when not). Reading the one an outcome does not have raises ``AttributeError``
    saying so, which is why both are typed without ``None``: after ``if outcome.ok:``
    mypy and pyright alike accept ``outcome.result.url``, and ``outcome.error`` in the
    ``else`` branch is a :class:`MonicaError`.

    Attributes:
        index: Position of the input in the batch (0-based).
        source: The input as given.
    """

    index: int
    source: str
    _result: UpscaleResult | None = attrs.field(default=None, alias="result")
    _error: MonicaError | None = attrs.field(
        default=None, alias="error", validator=_one_of_result_and_error
    )

    @property
    def ok(self) -> bool:
        """``True`` when the input was upscaled: :attr:`result` is there, not :attr:`error`."""
        return self._error is None

    @property
    def result(self) -> UpscaleResult:
        """The result, when :attr:`ok`.

        Raises:
            AttributeError: The input failed (its error is the ``__cause__``).
        """
        if self._result is None:
            raise AttributeError(
                f"input {self.index} ({excerpt(self.source, 100)!r}) failed with "
                f"{type(self._error).__name__}, so its Outcome has no result: test "
                "outcome.ok first, and read outcome.error when it is False"
            ) from self._error
        return self._result

    @property
    def error(self) -> MonicaError:
        """The error the input ended with, when not :attr:`ok`.

        Raises:
            AttributeError: The input succeeded.
        """
        if self._error is None:
            raise AttributeError(
                f"input {self.index} ({excerpt(self.source, 100)!r}) succeeded, so its "
                "Outcome has no error: test outcome.ok first, and read outcome.result "
                "when it is True"
            )
        return self._error

    def __repr__(self) -> str:
        value = f"result={self._result!r}" if self._error is None else f"error={self._error!r}"
        return f"Outcome(index={self.index!r}, source={self.source!r}, {value})"
