"""A spec-faithful fake Monica Upscale server for tests and benchmarks.

A real aiohttp server on 127.0.0.1 that keeps the published contract, really
upscales pictures (Pillow, imported only when needed) and injects latency, rate
limits and faults on demand::

    from monica_async.testing import FakeMonicaServer

    async with FakeMonicaServer(api_key="test-key") as server:
        url = server.sample_image(640, 480)
        ...  # POST {server.base_url}/v1/image/tool/upscale
        assert server.stats.accepted == 1

In another process: ``python -m monica_async.testing --port 0`` prints
``READY <base_url>``; stats are at ``GET <base_url>/_fake/stats`` and are reset by
``POST <base_url>/_fake/reset``. With pytest, the ``fake_monica`` and
``fake_monica_factory`` fixtures come with the package's pytest plugin.
"""

from ._serve import serve_fake_main
from ._server import (
    API_PATH,
    DEFAULT_FAULT_WEIGHTS,
    RESET_PATH,
    STATS_PATH,
    FakeMonicaServer,
    FakeServerFactory,
    FakeServerStats,
    Fault,
    Latency,
    make_sample_image,
)

__all__ = [
    "API_PATH",
    "DEFAULT_FAULT_WEIGHTS",
    "RESET_PATH",
    "STATS_PATH",
    "FakeMonicaServer",
    "FakeServerFactory",
    "FakeServerStats",
    "Fault",
    "Latency",
    "make_sample_image",
    "serve_fake_main",
]
