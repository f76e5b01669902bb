"""``python -m monica_async.cli``: the ``monica-upscale`` command line."""

import sys

from ._main import main

sys.exit(main())
