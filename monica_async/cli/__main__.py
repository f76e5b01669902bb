"""``python -m monica_async.cli``: the ``monica-upscale`` command line."""

from ._main import entry

entry()
