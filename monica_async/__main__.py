"""``python -m monica_async``: the ``monica-upscale`` command line."""

import sys

from .cli import main

sys.exit(main())
