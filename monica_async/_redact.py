"""Secrets out of everything the library says: what is secret, and the one way it is hidden.

What is secret: the API key and, of every URL the client sends a request to or sends
in a request (the image of an upscale, the result of a download), its userinfo
(``user:password@``) and the values of its query (a presigned URL's signature and
credential). A fragment is never sent, and dropped with the query.

Servers quote what they were sent (``no such key /r.png?X-Amz-Signature=...``,
``key Bearer sk-... is not valid``), so building messages from safe parts is not
enough. Every error the library raises for an exchange goes through
:func:`scrub_error`, given the secrets of that exchange, before it leaves: its
message, ``str``, ``repr``, ``url``, ``body`` and ``code``, and the aiohttp error it
was raised from. URLs in errors, log records and spans are :func:`safe_url` (scheme,
host, port and path); any other text shown goes through :func:`scrub_text`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import unquote, unquote_plus

import aiohttp

from ._exceptions import APIError, MonicaError

__all__ = ["MIN_SECRET_LENGTH", "REDACTED", "safe_url", "scrub_error", "scrub_text", "url_secrets"]

#: What a secret becomes.
REDACTED: Final = "<redacted>"
#: Values shorter than this are left in place: too common to be told apart from the
#: text around them ("1", "png", "true"), too short to be a credential.
MIN_SECRET_LENGTH: Final = 4
#: An http(s) URL within free text: scheme, userinfo, host and path, query and fragment.
#: It ends at white space, a quote or an angle bracket (HTML, XML and JSON bodies).
_URL_IN_TEXT: Final = re.compile(
    r"(?P<scheme>\bhttps?://)(?:[^\s/?#@'\"<>]*@)?(?P<rest>[^\s?#'\"<>]*)(?P<query>[?#][^\s'\"<>]*)?",
    re.IGNORECASE,
)
#: How deep the chain of causes of an error is scrubbed (a guard against cycles).
_CHAIN_LIMIT: Final = 8


def safe_url(url: str) -> str:
    """*url* as errors, logs and spans show it: scheme, host, port and path.

    The userinfo, query and fragment are dropped. Never raises, whatever *url* is.
    """
    base = url.split("#", 1)[0].split("?", 1)[0]
    scheme, sep, rest = base.partition("://")
    if not sep:
        return base
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def url_secrets(url: str) -> tuple[str, ...]:
    """What of *url* must never be shown: its user, password and query values.

    Each as written in the URL and percent-decoded (a server may quote either);
    values shorter than :data:`MIN_SECRET_LENGTH` are left out.
    """
    base = url.split("#", 1)[0]
    address, _, query = base.partition("?")
    _, sep, rest = address.partition("://")
    authority = rest.partition("/")[0] if sep else ""
    userinfo = authority.rpartition("@")[0]
    found: list[str] = []
    raw = [*userinfo.split(":", 1)] if userinfo else []
    raw += [piece.partition("=")[2] for piece in query.split("&")] if query else []
    for value in raw:
        found += (value, unquote(value), unquote_plus(value))
    return tuple(dict.fromkeys(v for v in found if len(v) >= MIN_SECRET_LENGTH))


def _strip_url(match: re.Match[str]) -> str:
    query = f"?{REDACTED}" if match["query"] and match["query"].startswith("?") else ""
    return match["scheme"] + match["rest"] + query


def scrub_text(text: str, secrets: Iterable[str] = ()) -> str:
    """*text* with every URL in it stripped of userinfo and query, and *secrets* replaced.

    A URL's query becomes ``?<redacted>`` (so that a reader sees there was one); each
    secret of at least :data:`MIN_SECRET_LENGTH` characters, wherever it appears,
    becomes ``<redacted>``.
    """
    text = _URL_IN_TEXT.sub(_strip_url, text)
    # The longest first: a value that contains another is hidden whole.
    hidden = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
    for secret in hidden:
        text = text.replace(secret, REDACTED)
    return text


def scrub_error(error: BaseException, *, key: str | None = None, urls: Iterable[str] = ()) -> None:
    """Hide *key* and the secrets of *urls* in *error* and its causes, in place.

    Args:
        error: An error about to leave the library (or the aiohttp error that will
            become the cause of one).
        key: The API key.
        urls: The URLs of the exchange: the one requested, and any sent in its body.
    """
    secrets = [s for url in urls for s in url_secrets(url)]
    if key:
        secrets.append(key)
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < _CHAIN_LIMIT:
        seen.add(id(current))
        _scrub_one(current, secrets)
        current = current.__cause__ or current.__context__


def _scrub_one(error: BaseException, secrets: list[str]) -> None:
    def clean(value: object) -> object:
        return scrub_text(value, secrets) if isinstance(value, str) else value

    if isinstance(error, aiohttp.ClientResponseError):
        # aiohttp keeps the request's URL and headers (Authorization included) here,
        # and shows them in its str and repr.
        _scrub_request_info(error)
    else:
        error.args = tuple(clean(arg) for arg in error.args)
    if not isinstance(error, MonicaError):
        return
    for name in ("message", "body", "code"):
        value = getattr(error, name, None)
        if isinstance(value, str):
            setattr(error, name, clean(value))
    if isinstance(error, APIError) and error.url:
        error.url = safe_url(error.url)


def _scrub_request_info(error: aiohttp.ClientResponseError) -> None:
    info = error.request_info
    if info is None:
        return
    headers = info.headers.copy()
    if "Authorization" in headers:
        headers["Authorization"] = REDACTED
    url_type = type(info.url)
    redacted = info._replace(
        url=url_type(safe_url(str(info.url))),
        real_url=url_type(safe_url(str(info.real_url))),
        headers=type(info.headers)(headers),
    )
    error.request_info = redacted
    error.args = (redacted, error.history)
