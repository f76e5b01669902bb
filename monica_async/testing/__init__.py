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

Monica's documented limits for a new key, time-scaled for a quick test, and a
balance that runs out after five calls::

    FakeMonicaServer(**documented_limits(time_scale=5), latency=(0.4, 0.8), quota=5)
"""

from ._serve import serve_fake_main
from ._server import (
    API_PATH,
    DEFAULT_FAULT_WEIGHTS,
    DOCUMENTED_MAX_CONCURRENCY,
    DOCUMENTED_RATE_LIMIT,
    QUOTA_CODE,
    QUOTA_MESSAGE,
    QUOTA_PATH,
    RATE_LIMIT_MESSAGE,
    RESET_PATH,
    STATS_PATH,
    FakeMonicaServer,
    FakeServerFactory,
    FakeServerStats,
    Fault,
    Latency,
    LimitOptions,
    documented_limits,
    make_sample_image,
)

__all__ = [
    "API_PATH",
    "DEFAULT_FAULT_WEIGHTS",
    "DOCUMENTED_MAX_CONCURRENCY",
    "DOCUMENTED_RATE_LIMIT",
    "QUOTA_CODE",
    "QUOTA_MESSAGE",
    "QUOTA_PATH",
    "RATE_LIMIT_MESSAGE",
    "RESET_PATH",
    "STATS_PATH",
    "FakeMonicaServer",
    "FakeServerFactory",
    "FakeServerStats",
    "Fault",
    "Latency",
    "LimitOptions",
    "documented_limits",
    "make_sample_image",
    "serve_fake_main",
]
