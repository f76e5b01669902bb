"""One HTTP exchange with the API: a JSON POST, its answer read up to a cap.

The transport knows nothing of retries, limits or telemetry (the client's attempt
wraps it in those); it only sends, reads and maps aiohttp's errors to the library's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp
import attrs

from ._exceptions import APIConnectionError
from ._http import (
    MAX_ANSWER_BYTES,
    connections_opened,
    map_transport_error,
    read_capped,
    read_error_body,
    request_id,
    tells_reuse,
)

__all__ = ["Answer", "post_json"]


@attrs.frozen
class Answer:
    """What the server answered to one POST.

    Attributes:
        status: The HTTP status.
        headers: The answer's headers.
        body: The body, at most :data:`~monica_async._http.MAX_ANSWER_BYTES` of it.
        whole: Whether *body* is all of it (a 200 over the cap is not).
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    whole: bool = True

    @property
    def request_id(self) -> str | None:
        """The server's id for this exchange, when it sent one."""
        return request_id(self.headers)


async def post_json(
    session: aiohttp.ClientSession,
    url: str,
    payload: Any,
    *,
    headers: Mapping[str, str],
    timeout: aiohttp.ClientTimeout,
    proxy: str | None,
) -> Answer:
    """POST *payload* as JSON to *url* and read the answer; redirects are not followed.

    Raises:
        APIConnectionError: No answer came (:class:`~monica_async.APITimeoutError` when
            the time ran out). Its ``reused_connection`` is true when the request failed
            on a kept-alive connection before any byte of an answer: the server may have
            closed that connection while it sat idle, and sending again at once is worth it.
    """
    opened = connections_opened()
    answered = False
    try:
        async with session.post(
            url,
            data=json.dumps(payload),
            headers=headers,
            timeout=timeout,
            allow_redirects=False,
            proxy=proxy,
        ) as response:
            answered = True
            if response.status != 200:
                return Answer(response.status, response.headers, await read_error_body(response))
            body, whole = await read_capped(response, MAX_ANSWER_BYTES)
            return Answer(response.status, response.headers, body, whole)
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = map_transport_error(exc, "POST", url, timeout=timeout)
        if isinstance(error, APIConnectionError):
            error.reused_connection = (
                not answered
                and _may_be_stale(exc)
                and tells_reuse(session)
                and connections_opened() == opened
            )
        raise error from exc


def _may_be_stale(exc: BaseException) -> bool:
    """Whether *exc* is how a connection the server closed fails a request written to it."""
    return isinstance(
        exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
    ) and not isinstance(exc, aiohttp.ClientConnectorError)
