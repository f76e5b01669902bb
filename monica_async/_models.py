"""Values returned by the client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ._exceptions import APIResponseValidationError, InvalidRequestError, MonicaError, excerpt
from ._validation import validate_image_url

__all__ = ["Outcome", "UpscaleResult"]


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
        if type(payload) is not dict and not isinstance(payload, Mapping):
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
        return cls(
            url=image,
            source=source,
            scale=scale,
            attempts=attempts,
            elapsed=elapsed,
            request_id=request_id,
        )


@attrs.frozen(kw_only=True)
class Outcome:
    """What became of one input of a batch: a result or an error, never both.

    Attributes:
        index: Position of the input in the batch (0-based).
        source: The input as given.
        result: The result when it succeeded, else ``None``.
        error: The final error when it failed, else ``None``.
    """

    index: int
    source: str
    result: UpscaleResult | None = None
    error: MonicaError | None = None

    @property
    def ok(self) -> bool:
        """``True`` when the input was upscaled."""
        return self.result is not None
