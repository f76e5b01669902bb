"""The ``monica-upscale`` command line.

The library never imports this package: it needs the ``cli`` extra (rich, Pillow).
"""

from ._main import entry, main

__all__ = ["entry", "main"]
