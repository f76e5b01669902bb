"""The library's loggers, and ``MONICA_LOG``, which shows them on stderr without code.

Loggers (standard :mod:`logging`, silent until the application configures them):

- ``monica_async``: the client. DEBUG: one line per HTTP attempt (method, path,
  status or "no answer", seconds, attempt number). INFO: one line per retry (what,
  the wait, the reason, attempt n of m), and a shared Redis limit that is reachable
  again. WARNING: a shared Redis limit that became unreachable.
- ``monica_async.testing``: the fake server. ERROR: a failure of the server itself.

URLs in log lines lose their credentials, query and fragment; the API key never
appears.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Final

__all__ = ["LOG_ENV", "configure_from_environment"]

LOG_ENV: Final = "MONICA_LOG"
_LEVELS: Final = {"info": logging.INFO, "debug": logging.DEBUG}
_HANDLER_NAME: Final = "monica_async:" + LOG_ENV
_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_from_environment(
    environ: Mapping[str, str] = os.environ, logger_name: str = "monica_async"
) -> logging.Handler | None:
    """Show the library's log records on stderr when ``MONICA_LOG`` is ``info`` or ``debug``.

    Adds one stderr handler to the ``monica_async`` logger (never twice) and sets its
    level; returns the handler, or ``None`` when the variable is unset or empty. Any
    other value is ignored with a warning that names the accepted ones.
    """
    raw = environ.get(LOG_ENV, "")
    if not raw.strip():
        return None
    level = _LEVELS.get(raw.strip().lower())
    if level is None:
        warnings.warn(
            f"{LOG_ENV} must be 'info' or 'debug', got {raw!r}; it is ignored",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    logger = logging.getLogger(logger_name)
    logger.setLevel(level)
    for handler in logger.handlers:
        if handler.get_name() == _HANDLER_NAME:
            return handler
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(logging.Formatter(_FORMAT))
    logger.addHandler(handler)
    return handler
