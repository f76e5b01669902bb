"""Text shared by the library, the command line and the fake server.

The one rate syntax (``60/min``, ``5/s``, ``10/30s``) read by ``monica-upscale run
--rate`` and ``serve-fake --rate-limit``, and the clean-up that keeps Python object
reprs out of messages meant for people.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["RATE_EXAMPLES", "parse_rate", "without_object_reprs"]

#: Shown in help texts and in the messages of a rate that cannot be read.
RATE_EXAMPLES: Final = "60/min, 5/s, 1000/h or 10/30s"

_UNITS: Final = {
    **dict.fromkeys(("", "s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600.0),
}
# REQUESTS / [COUNT] UNIT, or REQUESTS / SECONDS (a bare number, the older form: 60/60).
_RATE: Final = re.compile(
    r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]*)\s*$", re.IGNORECASE | re.ASCII
)
_OBJECT_REPR: Final = re.compile(r"<(?:[\w.]+\.)?(\w+) object at 0x[0-9a-fA-F]+>")


def parse_rate(text: str) -> tuple[int, float]:
    """Read a rate written ``REQUESTS/WINDOW``; return ``(requests, seconds)``.

    The window is a unit (``s``, ``min``, ``h``, plural or long forms too), a number
    and a unit (``30s``, ``1.5min``) or a bare number of seconds (``60/60``).

    Raises:
        ValueError: *text* is not of that form, or asks for no request or an empty
            window. The message says what was expected without naming a flag: the
            caller adds its own.
    """
    match = _RATE.match(text)
    if match is None or (match.group(2) is None and not match.group(3)):
        raise ValueError(f"must look like {RATE_EXAMPLES}, got {text!r}")
    unit = _UNITS.get(match.group(3).lower())
    if unit is None:
        raise ValueError(f"must look like {RATE_EXAMPLES} (units: s, min, h), got {text!r}")
    requests = int(match.group(1))
    per = float(match.group(2) or 1) * unit
    if requests < 1 or per <= 0:
        raise ValueError(f"needs at least 1 request in a window > 0 s, e.g. 60/min, got {text!r}")
    return requests, per


def without_object_reprs(text: str) -> str:
    """*text* with each ``<module.Class object at 0x...>`` replaced by the class's name.

    Some exceptions (Pillow's, for one) put the repr of an object in their message:
    an address means nothing to the person who reads it.
    """
    return _OBJECT_REPR.sub(r"\1", text)
