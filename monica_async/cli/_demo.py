"""``monica-upscale demo``: the whole command line, offline, in a few seconds.

It starts the fake Monica server on 127.0.0.1 (real upscaling with Pillow), draws
sample pictures, writes an input file and runs the very code of ``monica-upscale
run`` against the fake server, with a small rate limit and scripted faults, so
that the progress display, the retries, the errors and the summary all show.
Then it writes an ``index.html`` gallery of every input next to its result.

A few inputs are meant to fail (too large, not a picture, missing): the demo
succeeds (exit status 0) when exactly those failed and every other one succeeded.
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import random
import sys
from pathlib import Path
from typing import Any, Final, TextIO

import attrs

from ._options import InputFormat, RateSpec, RunOptions, UsageError
from ._progress import require_pillow
from ._run import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, execute

__all__ = ["run_demo"]

RESULTS: Final = "results.jsonl"
INPUT_LIST: Final = "inputs.txt"
INPUTS: Final = "inputs"
UPSCALED: Final = "upscaled"
GALLERY: Final = "index.html"
#: Slow enough that the progress display has something to show, fast enough to finish soon.
DEMO_RATE: Final = RateSpec(3, 1.0)
DEMO_CONCURRENCY: Final = 4
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
    # Spread the failures among the successes, the same way for the same seed.
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


async def run_demo(
    *,
    count: int = 24,
    output_dir: Path = Path("monica-demo"),
    seed: int = 7,
    progress_bar: bool | None = None,
    out: TextIO | None = None,
) -> int:
    """Run the demo; return the exit status (0 when it went as designed).

    Raises:
        UsageError: Pillow is missing, or *output_dir* cannot be written.
    """
    out = sys.stdout if out is None else out
    require_pillow()
    from monica_async.testing import FakeMonicaServer, Fault

    if count < 6:
        raise UsageError(f"--count must be at least 6, got {count}")
    _prepare(output_dir)

    def say(message: str = "") -> None:
        print(message, file=out, flush=True)

    say(f"Drawing {count} sample pictures...")
    pictures = plan_pictures(count, seed)
    api_key = f"demo-{random.Random(seed).getrandbits(64):016x}"
    server = FakeMonicaServer(api_key=api_key, seed=seed)
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
        )
        status = await execute(options, out=out)
    say()
    if status == EXIT_INTERRUPTED:
        say("Demo interrupted.")
        return status
    if status not in (EXIT_OK, EXIT_FAILED):
        return status
    records = _latest_records(output_dir / RESULTS)
    gallery = write_gallery(output_dir, pictures, records)
    # Line 1 of the input list is its comment: picture i is on line i + 2.
    failed = {i for i, _ in enumerate(pictures) if not records.get(i + 2, {}).get("ok")}
    expected = {i for i, p in enumerate(pictures) if p.fails_because}
    downloaded = sum(1 for r in records.values() if r.get("ok"))
    say(f"Wrote into {output_dir}{os.sep}:")
    say(f"  {INPUT_LIST}  the input list ({len(pictures)} URLs)")
    say(f"  {INPUTS}{os.sep}  the original pictures")
    say(f"  {UPSCALED}{os.sep}  {downloaded} upscaled pictures")
    say(f"  {RESULTS}  one JSON line per input")
    say(f"  {GALLERY}  a gallery of every input next to its result: {gallery.resolve().as_uri()}")
    if failed == expected:
        say(
            f"The demo went as designed: {len(expected)} inputs failed on purpose (see the "
            "gallery for their error messages), every other one was upscaled 2x."
        )
        return EXIT_OK
    surprising = sorted(pictures[i].name for i in failed ^ expected)
    say(f"The demo did not go as designed; unexpected outcomes for: {', '.join(surprising)}")
    return EXIT_FAILED


def _latest_records(path: Path) -> dict[int, dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                records[int(record["line"])] = record
    return records


def _size_of(path: Path) -> str:
    from PIL import Image

    try:
        with Image.open(path) as picture:
            width, height = picture.size
            return f"{width}x{height} {picture.format}"
    except (OSError, ValueError):
        return "not a picture"


_STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 2rem; background: #fafafa; color: #222; }
table { border-collapse: collapse; }
td, th { border: 1px solid #ddd; padding: .5rem; vertical-align: top; background: #fff; }
img { max-width: 320px; max-height: 240px; display: block; image-rendering: auto; }
.size { color: #555; font-size: .85rem; margin-top: .25rem; }
.error { color: #a40000; max-width: 420px; white-space: pre-wrap; font-size: .9rem; }
.ok { color: #0a6a0a; }
"""


def write_gallery(
    output_dir: Path, pictures: list[DemoPicture], records: dict[int, dict[str, Any]]
) -> Path:
    """Write ``index.html``: every input next to its result or its error; return its path."""
    rows: list[str] = []
    succeeded = 0
    for i, picture in enumerate(pictures):
        record = records.get(i + 2, {})
        original = output_dir / INPUTS / picture.name
        source_cell = (
            f'<img src="{html.escape(f"{INPUTS}/{picture.name}")}" alt="">'
            f'<div class="size">{html.escape(picture.name)}<br>'
            f"{html.escape(_size_of(original))}</div>"
        )
        if record.get("ok") and record.get("path"):
            succeeded += 1
            result_name = Path(str(record["path"])).name
            result_path = output_dir / UPSCALED / result_name
            attempts = int(record.get("attempts") or 1)
            retried = f", after {attempts} attempts" if attempts > 1 else ""
            result_cell = (
                f'<img src="{html.escape(f"{UPSCALED}/{result_name}")}" alt="">'
                f'<div class="size ok">{html.escape(_size_of(result_path))}{retried}</div>'
            )
        else:
            error = record.get("error") or {}
            status = f"HTTP {error['status']} " if error.get("status") else ""
            code = f"{error['code']}: " if error.get("code") else ""
            text = f"{error.get('type', 'no result')} ({status}{code}{error.get('message', '')})"
            meant = f"\n\nMeant to fail: {picture.fails_because}." if picture.fails_because else ""
            result_cell = f'<div class="error">{html.escape(text + meant)}</div>'
        rows.append(f"<tr><td>{source_cell}</td><td>{result_cell}</td></tr>")
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>monica-upscale demo</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        "<h1>monica-upscale demo</h1>\n"
        f"<p>{succeeded} of {len(pictures)} inputs upscaled 2x; the failures are part of the "
        "show. Results: <code>results.jsonl</code>.</p>\n"
        "<table>\n<tr><th>input</th><th>result</th></tr>\n" + "\n".join(rows) + "\n</table>\n"
        "</body>\n</html>\n"
    )
    path = output_dir / GALLERY
    path.write_text(page, encoding="utf-8")
    return path
