"""``monica-upscale demo``: the whole command line, offline, in a few seconds.

It starts the fake Monica server on 127.0.0.1 (real upscaling with Pillow), draws
sample pictures, writes an input file and runs the very code of ``monica-upscale
run`` against the fake server, with a small rate limit and scripted faults, so
that the progress display, the retries, the errors and the summary all show.
Then it writes an ``index.html`` gallery: what happened at the top, the failures
first, and each original beside its result at the same scale.

A few inputs are meant to fail (too large, not a picture, missing): the demo
succeeds (exit status 0) when exactly those failed and every other one succeeded.
Like ``run``, it writes nothing to stdout: what it says goes to stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
from pathlib import Path
from typing import Any, Final, TextIO

import attrs

from monica_async._stats import ClientStats

from ._gallery import (
    GALLERY,
    INPUT_LIST,
    INPUTS,
    RESULTS,
    UPSCALED,
    GalleryRow,
    RunFigures,
    write_gallery,
)
from ._options import InputFormat, RateSpec, RunOptions, UsageError
from ._progress import Tally, require_pillow
from ._run import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, execute

__all__ = ["DEMO_MAX_COUNT", "DEMO_MIN_COUNT", "DEMO_RATE", "run_demo"]

#: Slow enough that the progress display has something to show, fast enough to finish soon.
DEMO_RATE: Final = RateSpec(3, 1.0)
DEMO_CONCURRENCY: Final = 4
#: Four inputs fail on purpose; two more at least show what succeeds.
DEMO_MIN_COUNT: Final = 6
#: At DEMO_RATE, the largest demo takes about a minute and a half.
DEMO_MAX_COUNT: Final = 200
_FORMATS: Final = ("PNG", "JPEG", "WEBP")
_EXTENSIONS: Final = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


@attrs.frozen
class DemoPicture:
    """One input of the demo and what it is meant to do."""

    name: str
    data: bytes = attrs.field(repr=False)
    width: int | None
    height: int | None
    format: str
    #: Why the input is meant to fail, or ``None`` when it should be upscaled.
    fails_because: str | None = None
    #: Faults the fake server injects into its first attempts (names of ``Fault``).
    faults: tuple[str, ...] = ()
    #: Not put on the fake server, so that fetching it fails.
    missing: bool = False


def plan_pictures(count: int, seed: int) -> list[DemoPicture]:
    """Draw the demo's pictures: varied sizes and formats, four meant to fail."""
    from monica_async.testing import make_sample_image

    rng = random.Random(seed)
    good = count - 4
    fault_cycle: list[tuple[str, ...]] = [
        ("HTTP_503",),
        ("HTTP_429",),
        ("HTTP_502", "HTTP_503"),
        ("HTTP_500",),
    ]
    pictures: list[DemoPicture] = []
    for i in range(good):
        fmt = _FORMATS[i % len(_FORMATS)]
        if i == 0:
            width, height = 24, 24
        else:
            width, height = rng.randrange(64, 801, 8), rng.randrange(48, 601, 8)
        data = make_sample_image(width, height, fmt, seed=seed + i)
        # About one input in five meets a server fault that a retry absorbs.
        faults = fault_cycle[(i // 5) % len(fault_cycle)] if i % 5 == 2 else ()
        name = f"picture-{i + 1:02d}-{width}x{height}.{_EXTENSIONS[fmt]}"
        pictures.append(DemoPicture(name, data, width, height, fmt, faults=faults))
    for width, height, fmt in ((2304, 1024, "JPEG"), (1024, 2176, "PNG")):
        name = f"too-large-{width}x{height}.{_EXTENSIONS[fmt]}"
        data = make_sample_image(width, height, fmt, seed=seed)
        why = f"{width}x{height} is over the 2048x2048 input limit"
        pictures.append(DemoPicture(name, data, width, height, fmt, fails_because=why))
    pictures.append(
        DemoPicture(
            "notes.png",
            b"These are notes, not a picture, whatever the name says.\n",
            None,
            None,
            "text",
            fails_because="it is text, not a picture",
        )
    )
    missing = make_sample_image(96, 64, "PNG", seed=seed)
    pictures.append(
        DemoPicture(
            "missing.png",
            missing,
            96,
            64,
            "PNG",
            fails_because="the image URL answers 404",
            missing=True,
        )
    )
    # Spread the failures among the successes in the input, as in real life, the same
    # way for the same seed; the gallery shows them first.
    rng.shuffle(pictures)
    return pictures


def _clear_previous(output_dir: Path) -> None:
    """Remove what an earlier demo wrote in *output_dir* (and nothing else)."""
    for name in (RESULTS, INPUT_LIST, GALLERY):
        with contextlib.suppress(FileNotFoundError):
            (output_dir / name).unlink()
    for sub in (INPUTS, UPSCALED):
        folder = output_dir / sub
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.is_file():
                entry.unlink()


def _prepare(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        _clear_previous(output_dir)
        (output_dir / INPUTS).mkdir(exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot write --output-dir {str(output_dir)!r}: {exc.strerror or exc}"
        ) from None


@attrs.define
class _Finished:
    """What the run reported when it ended."""

    tally: Tally | None = None
    stats: ClientStats | None = None

    def __call__(self, tally: Tally, stats: ClientStats) -> None:
        self.tally, self.stats = tally, stats


async def run_demo(
    *,
    count: int = 24,
    output_dir: Path = Path("monica-demo"),
    seed: int = 7,
    progress_bar: bool | None = None,
    verbosity: int = 0,
    err: TextIO | None = None,
) -> int:
    """Run the demo; return the exit status (0 when it went as designed).

    Everything it says goes to *err* (stderr); ``verbosity`` -1 says errors only.

    Raises:
        UsageError: Pillow is missing, *count* is out of range, or *output_dir*
            cannot be written.
    """
    err = sys.stderr if err is None else err
    require_pillow()
    from monica_async.testing import FakeMonicaServer, Fault

    if not DEMO_MIN_COUNT <= count <= DEMO_MAX_COUNT:
        raise UsageError(
            f"--count must be from {DEMO_MIN_COUNT} to {DEMO_MAX_COUNT} (four inputs fail on "
            f"purpose), got {count}"
        )
    _prepare(output_dir)

    def say(message: str = "") -> None:
        if verbosity >= 0:
            print(message, file=err, flush=True)

    say(f"Drawing {count} sample pictures...")
    pictures = plan_pictures(count, seed)
    api_key = f"demo-{random.Random(seed).getrandbits(64):016x}"
    server = FakeMonicaServer(api_key=api_key, seed=seed)
    finished = _Finished()
    async with server:
        urls: list[str] = []
        for picture in pictures:
            (output_dir / INPUTS / picture.name).write_bytes(picture.data)
            if picture.missing:
                urls.append(f"{server.base_url}/images/{picture.name}")
                continue
            url = server.add_image(picture.data, name=picture.name)
            if picture.faults:
                server.script_faults(url, [Fault[name] for name in picture.faults])
            urls.append(url)
        input_list = output_dir / INPUT_LIST
        input_list.write_text(
            "# monica-upscale demo: one URL per line, served by the local fake server\n"
            + "\n".join(urls)
            + "\n",
            encoding="utf-8",
        )
        meant_to_fail = [p for p in pictures if p.fails_because]
        faulty = sum(1 for p in pictures if p.faults)
        say(
            f"Fake Monica server at {server.base_url} (offline: loopback only, real "
            "upscaling with Pillow)."
        )
        say(
            f"{len(pictures)} inputs; {len(meant_to_fail)} are meant to fail (too large, not "
            f"a picture, missing), and the server will fail the first attempts of {faulty} "
            "others with 429/5xx answers, which the retries absorb."
        )
        say()
        options = RunOptions(
            input=str(input_list),
            output=output_dir / RESULTS,
            api_key=api_key,
            download_dir=output_dir / UPSCALED,
            base_url=server.base_url,
            rate=DEMO_RATE,
            concurrency=DEMO_CONCURRENCY,
            input_format=InputFormat.TXT,
            log_interval=2.0,
            progress_bar=progress_bar,
            verbosity=verbosity,
        )
        status = await execute(options, err=err, on_finish=finished)
    say()
    if status == EXIT_INTERRUPTED:
        say("Demo interrupted.")
        return status
    if status not in (EXIT_OK, EXIT_FAILED):
        return status
    records = _latest_records(output_dir / RESULTS)
    rows = [
        # Line 1 of the input list is its comment: picture i is on line i + 2.
        GalleryRow(
            name=p.name,
            record=records.get(i + 2, {}),
            meant_to_fail=p.fails_because,
            faults=tuple(name.replace("_", " ") for name in p.faults),
        )
        for i, p in enumerate(pictures)
    ]
    figures = RunFigures.of(finished.tally, finished.stats)
    gallery = write_gallery(output_dir, rows, figures, rate=str(DEMO_RATE))
    failed = {i for i, _ in enumerate(pictures) if not records.get(i + 2, {}).get("ok")}
    expected = {i for i, p in enumerate(pictures) if p.fails_because}
    downloaded = sum(1 for r in records.values() if r.get("ok"))
    say(f"Wrote into {output_dir}{os.sep}:")
    say(f"  {INPUT_LIST}  the input list ({len(pictures)} URLs)")
    say(f"  {INPUTS}{os.sep}  the original pictures")
    say(f"  {UPSCALED}{os.sep}  {downloaded} upscaled pictures")
    say(f"  {RESULTS}  one JSON line per input")
    say(
        f"  {GALLERY}  what happened, each original beside its result: {gallery.resolve().as_uri()}"
    )
    if failed == expected:
        say(
            f"The demo went as designed: {len(expected)} inputs failed on purpose (the "
            "gallery shows them first, with their error messages), every other one was "
            "upscaled 2x."
        )
        return EXIT_OK
    surprising = sorted(pictures[i].name for i in failed ^ expected)
    print(
        "monica-upscale: error: the demo did not go as designed; unexpected outcomes for: "
        + ", ".join(surprising),
        file=err,
        flush=True,
    )
    return EXIT_FAILED


def _latest_records(path: Path) -> dict[int, dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                records[int(record["line"])] = record
    return records
