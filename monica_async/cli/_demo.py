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
from typing import TYPE_CHECKING, Any, Final, TextIO

import attrs

from monica_async._stats import ClientStats

if TYPE_CHECKING:
    from monica_async.testing import FakeMonicaServer

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
from ._run import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_QUOTA, execute

__all__ = ["DEMO_MAX_COUNT", "DEMO_MIN_COUNT", "DEMO_RATE", "run_demo"]

#: Slow enough that the progress display has something to show, fast enough to finish soon.
DEMO_RATE: Final = RateSpec(3, 1.0)
DEMO_CONCURRENCY: Final = 4
#: ``--documented-limits`` plays Monica's one-minute window this many times faster.
DEMO_TIME_SCALE: Final = 5.0
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
    """What the runs reported when they ended (two when the balance ran out)."""

    runs: list[tuple[Tally, ClientStats]] = attrs.Factory(list)

    def __call__(self, tally: Tally, stats: ClientStats) -> None:
        self.runs.append((tally, stats))

    def figures(self) -> RunFigures:
        """The figures of the demo: every run's successes, the last run's failures."""
        if not self.runs:
            return RunFigures.of(None, None)
        first, last = self.runs[0][0], self.runs[-1][0]
        return RunFigures(
            succeeded=sum(tally.succeeded for tally, _ in self.runs),
            failed=last.failures,
            retries=sum(stats.retries for _, stats in self.runs),
            rate_limited=sum(stats.rate_limited for _, stats in self.runs),
            elapsed=first.elapsed(),
        )


@attrs.frozen
class _Say:
    """Prints for people on *err*, unless ``verbosity`` is -1 (errors only)."""

    err: TextIO
    verbosity: int

    def __call__(self, message: str = "") -> None:
        if self.verbosity >= 0:
            print(message, file=self.err, flush=True)


@attrs.frozen(kw_only=True)
class _Play:
    """How the fake server and the run behave beyond the scripted faults."""

    #: The server's balance runs out after this many successful calls.
    quota: int | None = None
    #: The server plays Monica's documented limits, time-scaled; the run its defaults.
    documented_limits: bool = False

    def server_options(self) -> dict[str, Any]:
        """Keyword arguments of the fake server."""
        from monica_async.testing import documented_limits

        options: dict[str, Any] = {"quota": self.quota}
        if self.documented_limits:
            options.update(documented_limits(DEMO_TIME_SCALE))
        return options

    def limit(self) -> str:
        """The rate limit, as the gallery shows it."""
        if self.documented_limits:
            return f"automatic; the server allows 10/{60 / DEMO_TIME_SCALE:g}s, 8 in flight"
        return str(DEMO_RATE)


async def run_demo(
    *,
    count: int = 24,
    output_dir: Path = Path("monica-demo"),
    seed: int = 7,
    progress_bar: bool | None = None,
    verbosity: int = 0,
    err: TextIO | None = None,
    quota: int | None = None,
    documented_limits: bool = False,
) -> int:
    """Run the demo; return the exit status (0 when it went as designed).

    Everything it says goes to *err* (stderr); ``verbosity`` -1 says errors only.
    With *quota*, the fake balance runs out after that many successful calls: the run
    stops, the demo tops the balance up and resumes. With *documented_limits*, the
    fake server plays Monica's default limits (time-scaled) and the run its defaults.

    Raises:
        UsageError: Pillow is missing, *count* is out of range, or *output_dir*
            cannot be written.
    """
    err = sys.stderr if err is None else err
    require_pillow()
    _check_count(count)
    _prepare(output_dir)
    say = _Say(err, verbosity)
    say(f"Drawing {count} sample pictures...")
    pictures = plan_pictures(count, seed)
    play = _Play(quota=quota, documented_limits=documented_limits)
    finished = _Finished()
    options = _run_options(output_dir, progress_bar, verbosity, play)
    status = await _serve_and_run(pictures, output_dir, options, seed, play, say, finished)
    say()
    if status == EXIT_INTERRUPTED:
        say("Demo interrupted.")
        return status
    if status not in (EXIT_OK, EXIT_FAILED):
        return status
    return _conclude(pictures, output_dir, finished.figures(), play, say)


def _check_count(count: int) -> None:
    if not DEMO_MIN_COUNT <= count <= DEMO_MAX_COUNT:
        raise UsageError(
            f"--count must be from {DEMO_MIN_COUNT} to {DEMO_MAX_COUNT} (four inputs fail on "
            f"purpose), got {count}"
        )


def _run_options(
    output_dir: Path, progress_bar: bool | None, verbosity: int, play: _Play
) -> RunOptions:
    """The ``run`` options of the demo, but for the key and the server's URL."""
    paced = not play.documented_limits
    return RunOptions(
        input=str(output_dir / INPUT_LIST),
        output=output_dir / RESULTS,
        api_key="",
        download_dir=output_dir / UPSCALED,
        rate=DEMO_RATE if paced else None,
        concurrency=DEMO_CONCURRENCY if paced else None,
        input_format=InputFormat.TXT,
        log_interval=2.0,
        progress_bar=progress_bar,
        verbosity=verbosity,
    )


async def _serve_and_run(
    pictures: list[DemoPicture],
    output_dir: Path,
    options: RunOptions,
    seed: int,
    play: _Play,
    say: _Say,
    finished: _Finished,
) -> int:
    """Start the fake server, serve the pictures and run ``run`` against it."""
    from monica_async.testing import FakeMonicaServer

    api_key = f"demo-{random.Random(seed).getrandbits(64):016x}"
    server = FakeMonicaServer(api_key=api_key, seed=seed, **play.server_options())
    async with server:
        _publish(server, pictures, output_dir)
        _announce(server, pictures, play, say)
        options = attrs.evolve(options, api_key=api_key, base_url=server.base_url)
        status = await execute(options, err=say.err, on_finish=finished)
        if status == EXIT_QUOTA:
            say()
            say("The demo tops the fake balance up and resumes, as you would after a top-up.")
            say()
            server.quota = None
            options = attrs.evolve(options, resume=True)
            status = await execute(options, err=say.err, on_finish=finished)
    return status


def _publish(server: FakeMonicaServer, pictures: list[DemoPicture], output_dir: Path) -> None:
    """Write the pictures and the input list; serve them, with their scripted faults."""
    from monica_async.testing import Fault

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
    (output_dir / INPUT_LIST).write_text(
        "# monica-upscale demo: one URL per line, served by the local fake server\n"
        + "\n".join(urls)
        + "\n",
        encoding="utf-8",
    )


def _announce(
    server: FakeMonicaServer, pictures: list[DemoPicture], play: _Play, say: _Say
) -> None:
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
    if play.documented_limits:
        say(
            "The server plays Monica's default limits for a new key, 5 times faster: 10 "
            f"requests per {60 / DEMO_TIME_SCALE:g} s, 8 in flight; the run uses its defaults."
        )
    if play.quota is not None:
        say(f"The key's balance runs out after {play.quota} successful call(s).")
    say()


def _conclude(
    pictures: list[DemoPicture], output_dir: Path, figures: RunFigures, play: _Play, say: _Say
) -> int:
    """Write the gallery, say where everything is and whether it went as designed."""
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
    gallery = write_gallery(output_dir, rows, figures, rate=play.limit())
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
        file=say.err,
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
