"""Picture work for the fake server: sample pictures and real upscaling.

Pillow is imported inside the functions that need it, so that the package (and a
fake server with ``process_images=False``) works where Pillow is not installed.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from functools import cache
from typing import TYPE_CHECKING, Final

from monica_async._text import without_object_reprs

if TYPE_CHECKING:
    from PIL.Image import Image as Picture

__all__ = [
    "SAMPLE_FORMATS",
    "ImageError",
    "content_type_for",
    "make_sample",
    "normalize_format",
    "placeholder_png",
    "require_pillow",
    "sniff_content_type",
    "upscale",
]

#: Formats :func:`make_sample` can write.
SAMPLE_FORMATS: Final = ("PNG", "JPEG", "WEBP")

_CONTENT_TYPES: Final = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}

_PILLOW_MISSING: Final = (
    "Pillow is needed for real image work: install it with `pip install 'monica-async[testing]'`, "
    "or use FakeMonicaServer(process_images=False)"
)


class ImageError(Exception):
    """The picture cannot be upscaled; ``code`` and ``message`` go into a 400 body."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def require_pillow() -> None:
    """Raise ``ImportError`` saying how to get Pillow when it is not installed."""
    try:
        import PIL  # noqa: F401
    except ImportError as exc:
        raise ImportError(_PILLOW_MISSING) from exc


def content_type_for(fmt: str) -> str:
    """Return the media type of one of :data:`SAMPLE_FORMATS`."""
    return _CONTENT_TYPES[fmt]


def sniff_content_type(data: bytes) -> str:
    """Guess a picture's media type from its first bytes."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    return "application/octet-stream"


def normalize_format(fmt: str) -> str:
    """Return *fmt* upper-cased when it is one of :data:`SAMPLE_FORMATS`, else raise."""
    name = fmt.upper()
    if name == "JPG":
        name = "JPEG"
    if name not in SAMPLE_FORMATS:
        raise ValueError(f"format must be one of {SAMPLE_FORMATS}, got {fmt!r}")
    return name


def make_sample(width: int, height: int, fmt: str = "PNG", *, seed: int = 0) -> bytes:
    """Draw a test picture of *width* x *height* pixels and encode it as *fmt*.

    The picture has gradients, shapes and a label, so that a resize has detail to
    work on; the same arguments always give the same picture.
    """
    fmt = normalize_format(fmt)
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be at least 1, got {width}x{height}")
    require_pillow()
    from PIL import Image, ImageDraw

    size = (width, height)
    gradient = Image.linear_gradient("L")
    picture = Image.merge(
        "RGB",
        (
            gradient.resize(size),
            gradient.rotate(90).resize(size),
            Image.radial_gradient("L").resize(size),
        ),
    )
    draw = ImageDraw.Draw(picture)
    rng = random.Random(f"{seed}:{width}x{height}")
    for _ in range(8):
        x0, x1 = sorted(rng.randrange(width) for _ in range(2))
        y0, y1 = sorted(rng.randrange(height) for _ in range(2))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=colour, outline=(0, 0, 0))
    draw.text((2, 2), f"{width}x{height}", fill=(255, 255, 255))
    out = io.BytesIO()
    picture.save(out, format=fmt, **({"quality": 90} if fmt != "PNG" else {}))
    return out.getvalue()


def upscale(
    data: bytes,
    scale: int,
    *,
    max_input: tuple[int, int],
    max_output: tuple[int, int],
) -> bytes:
    """Decode *data*, resize it *scale* times with LANCZOS and return it as PNG.

    Runs in a worker thread: it is CPU-bound.

    Raises:
        ImageError: The data is not a picture, or a size limit is exceeded.
    """
    require_pillow()
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as picture:
            width, height = picture.size
            if width > max_input[0] or height > max_input[1]:
                raise ImageError(
                    "image_too_large",
                    f"input image is {width}x{height}; the largest accepted input is "
                    f"{max_input[0]}x{max_input[1]}",
                )
            out_size = (width * scale, height * scale)
            if out_size[0] > max_output[0] or out_size[1] > max_output[1]:
                raise ImageError(
                    "image_too_large",
                    f"output image would be {out_size[0]}x{out_size[1]} (input {width}x{height} "
                    f"x {scale}); the largest output is {max_output[0]}x{max_output[1]}",
                )
            picture.load()
            resized = _resizable(picture).resize(out_size, Image.Resampling.LANCZOS)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Raised by Image.open itself, before the size check above can run.
        raise ImageError(
            "image_too_large",
            f"input image is far too large ({exc}); the largest accepted input is "
            f"{max_input[0]}x{max_input[1]}",
        ) from None
    except UnidentifiedImageError:
        # Pillow's own message shows the repr of the buffer it read from.
        raise ImageError(
            "invalid_image",
            f"image could not be decoded as a picture: the data ({_describe(data)}) is in "
            "no picture format the server reads (PNG, JPEG, WebP, GIF, BMP, TIFF...)",
        ) from None
    # Pillow reports corrupt data with many exception types (OSError, SyntaxError,
    # ValueError, struct.error, EOFError...); all of them mean "not a picture we can
    # read", which is the client's 400, never the server's 500.
    except Exception as exc:
        reason = without_object_reprs(str(exc)) or type(exc).__name__
        raise ImageError(
            "invalid_image", f"image could not be decoded as a picture: {reason}"
        ) from None
    out = io.BytesIO()
    # Level 1: outputs reach 4096x4096 and the default level costs seconds for them.
    _storable(resized).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def _describe(data: bytes) -> str:
    """How *data* starts, for a message: its size and whether it looks like text."""
    size = f"{len(data)} bytes"
    try:
        head = data[:64].decode("utf-8")
    except UnicodeDecodeError:
        return size
    if all(c.isprintable() or c in "\r\n\t" for c in head):
        return f"{size} of text"
    return size


def _resizable(picture: Picture) -> Picture:
    """Convert *picture* to a mode that LANCZOS resizes faithfully."""
    if picture.mode in ("RGB", "RGBA", "L", "LA", "I;16", "I", "F"):
        return picture
    has_alpha = "A" in picture.getbands() or "transparency" in picture.info
    if picture.mode.startswith("I;16") and not has_alpha:
        return picture.convert("I;16")
    # Pillow resizes "1" and "P" with NEAREST whatever filter is asked for.
    if picture.mode == "1":
        return picture.convert("L")
    return picture.convert("RGBA" if has_alpha else "RGB")


def _storable(picture: Picture) -> Picture:
    """Convert 32-bit grey (which PNG cannot hold) to 16-bit grey."""
    return picture.convert("I;16") if picture.mode in ("I", "F") else picture


@cache
def placeholder_png() -> bytes:
    """Return a 1x1 transparent PNG, written without Pillow.

    Served for result URLs when the server runs with ``process_images=False``.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 6, 0, 0, 0)  # 1x1, 8-bit RGBA
    pixels = zlib.compress(b"\x00" + b"\x00\x00\x00\x00")  # filter byte + one pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )
