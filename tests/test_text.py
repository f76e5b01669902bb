"""The one rate syntax, and messages free of Python object reprs."""

from __future__ import annotations

import pytest

from monica_async._text import parse_rate, without_object_reprs
from monica_async.cli._options import RateSpec
from monica_async.testing._images import ImageError, upscale

LIMITS = {"max_input": (2048, 2048), "max_output": (4096, 4096)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60/min", (60, 60.0)),
        ("5/s", (5, 1.0)),
        ("10/30s", (10, 30.0)),
        ("1000/h", (1000, 3600.0)),
        ("100/1.5min", (100, 90.0)),
        (" 3 / 2 minutes ", (3, 120.0)),
        ("4/hrs", (4, 3600.0)),
        ("60/60", (60, 60.0)),
        ("3/0.5", (3, 0.5)),
    ],
)
def test_rate_is_requests_over_a_window(text: str, expected: tuple[int, float]) -> None:
    """N/UNIT, N/<number>UNIT and the older N/SECONDS all read as (requests, seconds)."""
    assert expected == parse_rate(text)


@pytest.mark.parametrize(
    "text", ["", "60", "60/", "/s", "x/min", "60/fortnight", "5/ss", "0/s", "5/0s", "-1/s"]
)
def test_rate_refuses_other_text_showing_the_accepted_forms(text: str) -> None:
    """Anything else is a ValueError whose message shows an example of the syntax."""
    with pytest.raises(ValueError, match="60/min"):
        parse_rate(text)


def test_run_rate_and_serve_fake_rate_limit_read_the_same_syntax() -> None:
    """``run --rate`` reads what ``parse_rate`` reads (the fake server's flag uses it too)."""
    texts = ["60/min", "5/s", "10/30s", "60/60"]
    assert [parse_rate(t) for t in texts] == [
        (spec.requests, spec.per) for spec in map(RateSpec.parse, texts)
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [(RateSpec(3, 1.0), "3/s"), (RateSpec(60, 60.0), "60/min"), (RateSpec(10, 30.0), "10/30s")],
)
def test_rate_spec_prints_in_the_syntax_it_reads(spec: RateSpec, expected: str) -> None:
    """A rate is shown the way it is written on the command line."""
    assert (expected, spec) == (str(spec), RateSpec.parse(str(spec)))


def test_object_repr_becomes_its_class_name() -> None:
    """``<_io.BytesIO object at 0x...>`` reads ``BytesIO``; other text is left alone."""
    text = "cannot identify image file <_io.BytesIO object at 0x7fb2c0ffee00> (<3 items>)"
    assert "cannot identify image file BytesIO (<3 items>)" == without_object_reprs(text)


@pytest.mark.parametrize(
    "data",
    [
        b"These are notes, not a picture, whatever the name says.\n",
        bytes(range(256)),
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"\xff\xd8\xff\xe0" + b"\x00" * 40,
    ],
)
def test_undecodable_picture_message_shows_no_object_repr(data: bytes) -> None:
    """The fake server's 400 for data that is no picture says so without a Python repr."""
    with pytest.raises(ImageError) as caught:
        upscale(data, 2, **LIMITS)
    message = caught.value.message
    assert ("invalid_image", True, False) == (
        caught.value.code,
        message.startswith("image could not be decoded as a picture"),
        " object at 0x" in message,
    ), message


def test_text_is_told_apart_in_the_message() -> None:
    """Data that is text is described as text, which is the usual mistake."""
    with pytest.raises(ImageError) as caught:
        upscale(b"hello, world\n", 2, **LIMITS)
    assert "13 bytes of text" in caught.value.message
