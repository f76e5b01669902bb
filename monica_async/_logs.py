"""The library's loggers, and ``MONICA_LOG``, which shows them on stderr without code.

Loggers (standard :mod:`logging`, silent until the application configures them):

- ``monica_async``: the client. DEBUG: one line per HTTP attempt (method, path,
  status or "no answer", seconds, attempt number; a download's line also names the
  image's URL and the file or object it goes to). INFO: one line per retry (what,
  the wait, the reason, attempt n of m), and a shared Redis limit that is reachable
  again. WARNING: a batch that stops sending requests (the key was refused), and a
  shared Redis limit that became unreachable.
- ``monica_async.testing``: the fake server. ERROR: a failure of the server itself.

URLs in log lines lose their credentials, query and fragment; the API key never
appears.

``MONICA_LOG``'s handler steps aside for a record that another handler prints
already (the application's ``logging.basicConfig()``, say, or the command line's
``-v``): the variable then only sets the level, and nothing is printed twice.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Final

__all__ = ["LOG_ENV", "configure_from_environment", "handled_elsewhere"]

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
    other value is ignored with a warning that names the accepted ones. The handler
    prints only the records no other handler prints (:func:`handled_elsewhere`).
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
    handler.addFilter(lambda record: not handled_elsewhere(record, handler))
    logger.addHandler(handler)
    return handler


def handled_elsewhere(record: logging.LogRecord, handler: logging.Handler) -> bool:
    """Whether a handler other than *handler* prints *record*.

    The handlers that see a record are those of its logger and of each ancestor, up
    to a logger that does not propagate; one of them prints it when its level lets
    the record through. Decided for each record, so that it holds whether the
    application configured logging before importing the library or after.
    """
    current: logging.Logger | None = logging.getLogger(record.name)
    while current is not None:
        for other in current.handlers:
            if other is not handler and record.levelno >= other.level:
                return True
        current = current.parent if current.propagate else None
    return False
