"""``python -m monica_async``: the ``monica-upscale`` command line."""

from .cli import entry

entry()
