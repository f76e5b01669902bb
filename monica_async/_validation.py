"""Checks run on every argument before a request is sent."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Any, Final, TypeGuard
from urllib.parse import urlsplit

from ._exceptions import InvalidRequestError

__all__ = [
    "ALLOWED_SCALES",
    "MAX_URL_LENGTH",
    "is_plain_url",
    "validate_image_url",
    "validate_scale",
]

#: The scale factors the API accepts (the spec's enum). A future 4 is added here only.
ALLOWED_SCALES: Final[tuple[int, ...]] = (2,)

#: Longer URLs are refused: proxies and servers commonly cap request lines near 8 KiB.
MAX_URL_LENGTH: Final = 8192

#: The common shape of a valid URL, checked with one regex instead of a full parse
#: (a parse costs more than the rest of a request's bookkeeping). Anything else,
#: credentials, IPv6 literals, ports with leading zeros, upper-case schemes, is parsed.
#: Written to match without backtracking: the host's last character is checked by a
#: look-behind, and five-digit ports are tried before shorter ones (an ephemeral port
#: took 0.5 us to match with the short ones first, 0.3 us now).
_PLAIN_URL: Final = re.compile(
    r"https?://[A-Za-z0-9][A-Za-z0-9.-]*(?<![.-])"
    r"(?::(?:[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]|[0-9]{1,4}))?"
    r"(?:[/?#][!-~]*)?",
    re.ASCII,
)

_LOOPBACK_HOSTS: Final = frozenset({"localhost"})


def validate_scale(scale: Any) -> int:
    """Return *scale* when it is one of :data:`ALLOWED_SCALES`, else raise."""
    # bool is an int subclass and 2.0 == 2: both would slip past a plain `in` check.
    if type(scale) is not int or scale not in ALLOWED_SCALES:
        raise InvalidRequestError(f"scale must be one of {ALLOWED_SCALES}, got {scale!r}")
    return scale


def is_plain_url(image: object) -> TypeGuard[str]:
    """Whether *image* is an absolute http(s) URL in plain ASCII: the common case.

    A ``False`` says nothing: :func:`validate_image_url` tells what is wrong, if anything.
    """
    return type(image) is str and len(image) <= MAX_URL_LENGTH and bool(_PLAIN_URL.fullmatch(image))


def validate_image_url(image: Any) -> str:
    """Return *image* when it is an absolute http(s) URL the API can fetch, else raise."""
    # The common case first: a match also rules out spaces, controls and non-ASCII.
    if type(image) is str and len(image) <= MAX_URL_LENGTH and _PLAIN_URL.fullmatch(image):
        return image
    if not isinstance(image, str):
        raise InvalidRequestError(
            f"image must be a URL string, got {type(image).__name__}: {_short(image)}"
        )
    if not image.strip():
        raise InvalidRequestError("image must be a non-empty URL, got an empty string")
    if len(image) > MAX_URL_LENGTH:
        raise InvalidRequestError(
            f"image URL must be at most {MAX_URL_LENGTH} characters, got {len(image)}"
        )
    _refuse_spaces_and_controls(image)
    try:
        parts = urlsplit(image)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidRequestError(f"image is not a valid URL ({exc}): {_short(image)}") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise InvalidRequestError(
            f"image must be an absolute http(s) URL with a host, got {_short(image)}"
        )
    return image


def _refuse_spaces_and_controls(image: str) -> None:
    # Category Cc covers the C1 controls (U+0080-U+009F) as well as ASCII's.
    bad = next((c for c in image if c.isspace() or unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise InvalidRequestError(
            f"image URL must not contain spaces or control characters (found {bad!r}); "
            f"percent-encode them, got {_short(image)}"
        )


def is_loopback_host(host: str | None) -> bool:
    """Tell whether *host* names this machine (so plain http is harmless)."""
    if host is None:
        return False
    host = host.strip("[]").lower()
    if host in _LOOPBACK_HOSTS:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        # A name is not an address: "127.example.com" is somebody else's machine.
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
