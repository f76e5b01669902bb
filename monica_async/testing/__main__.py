"""``python -m monica_async.testing``: serve a fake Monica Upscale API."""

import sys

from ._serve import serve_fake_main

sys.exit(serve_fake_main())
