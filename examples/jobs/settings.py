"""The configuration every command reads from the environment."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Final

import attrs

DEFAULT_REDIS_URL: Final = "redis://127.0.0.1:6379/0"
#: Monica's published default for a key: 10 upscales a minute, 8 at once.
DEFAULT_RATE: Final = "10/min"
DEFAULT_IN_FLIGHT: Final = 8

_UNITS: Final = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
_RATE: Final = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(s|sec|min|m|h)\s*$", re.ASCII)


class SettingsError(ValueError):
    """A variable of the environment has a value the commands cannot use."""


def parse_rate(text: str) -> tuple[int, float]:
    """Read ``10/min``, ``5/s``, ``1000/h`` or ``10/12s``; return ``(requests, seconds)``."""
    match = _RATE.match(text)
    if match is None or int(match[1]) < 1 or float(match[2] or 1) <= 0:
        raise SettingsError(f"MONICA_RATE must look like 10/min, 5/s or 10/12s, got {text!r}")
    return int(match[1]), float(match[2] or 1) * _UNITS[match[3]]


@attrs.frozen(kw_only=True)
class Settings:
    """What the web front, the workers and the batch command share.

    Attributes:
        redis_url: The Redis of the queue and of the shared rate limit.
        requests: Upscales the key may start per window (all workers together).
        per: The window, in seconds.
        in_flight: Upscales the key may have in flight at once (all workers together).
    """

    redis_url: str = DEFAULT_REDIS_URL
    requests: int = 10
    per: float = 60.0
    in_flight: int = DEFAULT_IN_FLIGHT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read ``REDIS_URL``, ``MONICA_RATE`` and ``MONICA_IN_FLIGHT``."""
        requests, per = parse_rate(environ.get("MONICA_RATE") or DEFAULT_RATE)
        raw = environ.get("MONICA_IN_FLIGHT") or str(DEFAULT_IN_FLIGHT)
        if not raw.isdigit() or int(raw) < 1:
            raise SettingsError(f"MONICA_IN_FLIGHT must be an integer >= 1, got {raw!r}")
        return cls(
            redis_url=environ.get("REDIS_URL") or DEFAULT_REDIS_URL,
            requests=requests,
            per=per,
            in_flight=int(raw),
        )


def limit_name(api_key: str) -> str:
    """The name of the key's shared limit in Redis: a digest, never the key itself.

    Every worker with the same API key finds the same name, so they share one limit
    without being told about each other; ``monica-upscale run --redis-url`` names its
    limit the same way, so a batch run on the same Redis shares it too.
    """
    return "monica-upscale:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]
