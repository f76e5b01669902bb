"""The fake Monica server with its 429s stripped of ``Retry-After``.

A server that refuses without saying when to come back: the case where a client
has to find a window's length by itself. Same options as
``python -m monica_async.testing``.

    python benchmarks/_fake_no_retry_after.py --rate-limit 10/12s --max-concurrency 8
"""

from __future__ import annotations

import sys

from monica_async.testing import FakeMonicaServer, _serve
from monica_async.testing._server import _Reply


class NoRetryAfter(FakeMonicaServer):
    """Refuses over its limits as the fake server does, without ``Retry-After``."""

    def _admit(self, key: str) -> None:
        try:
            super()._admit(key)
        except _Reply as reply:
            reply.headers.pop("Retry-After", None)
            raise


if __name__ == "__main__":
    _serve.FakeMonicaServer = NoRetryAfter  # type: ignore[misc]
    sys.exit(_serve.serve_fake_main())
