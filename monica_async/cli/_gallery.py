"""The demo's ``index.html``: what happened, the failures first, each 2x shown as 2x.

At the top, the run's figures (successes, failures with their reasons, retries,
429 answers, wall time and rate). Then the failures, grouped by reason, then the
successes. Each original is drawn at the same scale as its result, so the result
shows twice as wide and tall as its original; each picture links to its
full-size file.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from monica_async._stats import ClientStats

from ._progress import Tally, format_seconds

__all__ = ["GalleryRow", "RunFigures", "display_size", "write_gallery"]

INPUTS: Final = "inputs"
UPSCALED: Final = "upscaled"
RESULTS: Final = "results.jsonl"
INPUT_LIST: Final = "inputs.txt"
GALLERY: Final = "index.html"
#: The largest box a result is drawn in; its original is drawn at the same scale.
RESULT_BOX: Final = (480, 360)


@attrs.frozen
class RunFigures:
    """The figures at the top of the page."""

    succeeded: int
    failed: int
    retries: int
    rate_limited: int
    elapsed: float

    @classmethod
    def of(cls, tally: Tally | None, stats: ClientStats | None) -> RunFigures:
        """The figures of a finished run (zeros for what it did not report)."""
        return cls(
            succeeded=0 if tally is None else tally.succeeded,
            failed=0 if tally is None else tally.failures,
            retries=0 if stats is None else stats.retries,
            rate_limited=0 if stats is None else stats.rate_limited,
            elapsed=0.0 if tally is None else tally.elapsed(),
        )

    @property
    def rate(self) -> float:
        """Inputs finished per second of wall time."""
        done = self.succeeded + self.failed
        return done / self.elapsed if self.elapsed > 0 else 0.0


@attrs.frozen
class GalleryRow:
    """One input of the demo: its file in ``inputs/`` and its latest record."""

    name: str
    record: dict[str, Any]
    #: Why the input is meant to fail, or ``None``.
    meant_to_fail: str | None = None
    #: The faults the server injected into its first attempts (``HTTP 503``...).
    faults: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The input was upscaled and downloaded."""
        return bool(self.record.get("ok")) and bool(self.record.get("path"))

    @property
    def reason(self) -> str:
        """What a failure is grouped by: the API's error code, else the error type."""
        error = self.record.get("error") or {}
        return str(error.get("code") or error.get("type") or "no result")


def display_size(width: int, height: int) -> tuple[int, int]:
    """How large to draw an original of *width* x *height* so that its 2x fits the box."""
    scale = min(1.0, RESULT_BOX[0] / (2 * width), RESULT_BOX[1] / (2 * height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _picture(path: Path) -> tuple[int, int, str] | None:
    from PIL import Image

    try:
        with Image.open(path) as picture:
            return picture.size[0], picture.size[1], str(picture.format)
    except (OSError, ValueError):
        return None


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _link(href: str, text: str) -> str:
    return f'<a href="{_e(href)}">{_e(text)}</a>'


def _image(href: str, kind: str, size: tuple[int, int]) -> str:
    width, height = size
    return (
        f'<a class="full" href="{_e(href)}" title="full size">'
        f'<img class="{kind}" src="{_e(href)}" width="{width}" height="{height}" '
        f'alt="{kind}"></a>'
    )


def _error_text(record: dict[str, Any], *, with_code: bool = True) -> str:
    """``BadRequestError (HTTP 400, invalid_image): message``.

    Without the code, for a line that already shows it: ``(BadRequestError, HTTP 400): ...``.
    """
    error = record.get("error") or {}
    kind = str(error.get("type") or "no result")
    status = f"HTTP {error['status']}" if error.get("status") else ""
    if with_code:
        label = ", ".join(part for part in (status, error.get("code") or "") if part)
        head = f"{kind} ({label})" if label else kind
    else:
        head = f"({kind}, {status})" if status else f"({kind})"
    message = error.get("message") or ""
    return f"{head}: {message}" if message else head


def _attempts(row: GalleryRow) -> str:
    attempts = int(row.record.get("attempts") or 0)
    if attempts == 0:
        return "never sent"
    text = f"{attempts} attempt{'s' if attempts > 1 else ''}"
    if attempts > 1 and row.faults:
        text += f" (retried after {', '.join(row.faults)})"
    return text


def _seconds(record: dict[str, Any]) -> str:
    elapsed = record.get("elapsed")
    return f"{float(elapsed):.2f} s" if isinstance(elapsed, int | float) else "?"


def _original_cell(output_dir: Path, row: GalleryRow) -> tuple[str, tuple[int, int, str] | None]:
    href = f"{INPUTS}/{row.name}"
    found = _picture(output_dir / INPUTS / row.name)
    if found is None:
        return f'<div class="nopic">{_link(href, "not a picture")}</div>', None
    width, height, _ = found
    return _image(href, "original", display_size(width, height)), found


def _success_row(output_dir: Path, row: GalleryRow) -> str:
    original_cell, original = _original_cell(output_dir, row)
    result_name = Path(str(row.record["path"])).name
    href = f"{UPSCALED}/{result_name}"
    result = _picture(output_dir / UPSCALED / result_name)
    if original is None or result is None:
        result_cell = _link(href, result_name)
        sizes = "sizes unknown"
        scale = ""
    else:
        width, height, fmt = original
        shown = display_size(width, height)
        # The result at exactly the original's scale: a 2x result is drawn 2x as large.
        drawn = (round(result[0] * shown[0] / width), round(result[1] * shown[1] / height))
        result_cell = _image(href, "result", drawn)
        sizes = f"{width}x{height} {fmt} &rarr; {result[0]}x{result[1]} {_e(result[2])}"
        scale = f'<li class="scale">both drawn at {100 * shown[0] / width:.0f}%</li>'
    details = (
        f'<div class="name">{_e(row.name)}</div><ul class="facts">'
        f'<li class="size">{sizes}</li>'
        f'<li class="attempts">{_e(_attempts(row))}</li>'
        f'<li class="time">{_e(_seconds(row.record))}</li>{scale}'
        f"<li>{_link(href, 'full-size result')} &middot; "
        f"{_link(f'{INPUTS}/{row.name}', 'original')}</li></ul>"
    )
    line = _e(row.record.get("line", ""))
    return (
        f'<tr class="upscaled" data-line="{line}"><td class="pic">{original_cell}</td>'
        f'<td class="pic">{result_cell}</td><td class="details">{details}</td></tr>'
    )


def _failure_row(output_dir: Path, row: GalleryRow) -> str:
    original_cell, original = _original_cell(output_dir, row)
    size = "not a picture" if original is None else f"{original[0]}x{original[1]} {original[2]}"
    meant = (
        f'<div class="meant">Meant to fail: {_e(row.meant_to_fail)}.</div>'
        if row.meant_to_fail
        else ""
    )
    details = (
        f'<div class="name">{_e(row.name)}</div>'
        f'<div class="error">{_e(_error_text(row.record))}</div>{meant}'
        f'<ul class="facts"><li class="size">{_e(size)}</li>'
        f'<li class="attempts">{_e(_attempts(row))}</li>'
        f'<li class="time">{_e(_seconds(row.record))}</li></ul>'
    )
    line = _e(row.record.get("line", ""))
    return (
        f'<tr class="failed" data-line="{line}"><td class="pic">{original_cell}</td>'
        f'<td class="details" colspan="2">{details}</td></tr>'
    )


def _summary(figures: RunFigures, failures: Sequence[GalleryRow], rate: str) -> str:
    items = [
        ("succeeded", "succeeded", str(figures.succeeded)),
        ("failed", "failed", str(figures.failed)),
        ("retries", "retries", str(figures.retries)),
        ("rate-limited", "429 answers", str(figures.rate_limited)),
        ("wall-time", "wall time", format_seconds(figures.elapsed)),
        ("rate", "rate", f"{figures.rate:.2f} inputs/s (limit {rate})"),
    ]
    figures_html = "".join(
        f'<div class="figure"><dt>{_e(label)}</dt><dd id="figure-{key}">{_e(value)}</dd></div>'
        for key, label, value in items
    )
    reasons = Counter(row.reason for row in failures)
    example = {row.reason: row for row in reversed(failures)}
    reason_items = "".join(
        f'<li><span class="count">{count} &times;</span> <code>{_e(reason)}</code> '
        f"{_e(_error_text(example[reason].record, with_code=False))}</li>"
        for reason, count in reasons.most_common()
    )
    reasons_html = (
        f'<h3>Why {len(failures)} failed</h3><ul class="reasons">{reason_items}</ul>'
        if failures
        else ""
    )
    return f'<section id="summary"><dl class="figures">{figures_html}</dl>{reasons_html}</section>'


_STYLE: Final = """
body { font-family: system-ui, sans-serif; margin: 1.5rem 2rem; background: #f6f6f4;
       color: #222; line-height: 1.4; }
h1 { margin: 0 0 .25rem; font-size: 1.6rem; }
h2 { margin: 2rem 0 .5rem; font-size: 1.25rem; }
h3 { margin: 1rem 0 .25rem; font-size: 1rem; }
.lead { color: #444; max-width: 60rem; margin: 0 0 1rem; }
.figures { display: flex; flex-wrap: wrap; gap: .75rem; margin: 0; }
.figure { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .5rem .9rem; }
.figure dt { font-size: .8rem; color: #666; }
.figure dd { margin: 0; font-size: 1.35rem; font-weight: 600; }
#figure-failed { color: #a40000; }
#figure-succeeded { color: #0a6a0a; }
.reasons { margin: .25rem 0; padding-left: 1.2rem; }
.reasons .count { font-weight: 600; }
table { border-collapse: collapse; background: #fff; }
th { text-align: left; font-weight: 600; font-size: .85rem; color: #555; }
td, th { border: 1px solid #ddd; padding: .5rem; vertical-align: top; }
td.pic { background: #fafafa; }
img { display: block; background: #eee; outline: 1px solid #ccc; }
.name { font-weight: 600; word-break: break-all; }
.facts { list-style: none; margin: .3rem 0 0; padding: 0; color: #444; font-size: .9rem; }
.error { color: #a40000; white-space: pre-wrap; max-width: 38rem; margin-top: .25rem; }
.meant { color: #555; font-style: italic; margin-top: .25rem; }
.nopic { width: 8rem; padding: 1rem 0; text-align: center; color: #666; }
"""


def write_gallery(
    output_dir: Path, rows: Sequence[GalleryRow], figures: RunFigures, *, rate: str
) -> Path:
    """Write ``index.html`` into *output_dir*; return its path."""
    failures = sorted(
        (row for row in rows if not row.ok),
        key=lambda row: (row.reason, int(row.record.get("line") or 0)),
    )
    successes = sorted((row for row in rows if row.ok), key=lambda row: row.name)
    failed_html = ""
    if failures:
        failed_html = (
            f'<section id="failed"><h2>Failed ({len(failures)})</h2><table>'
            '<tr><th>input</th><th colspan="2">what happened</th></tr>'
            + "".join(_failure_row(output_dir, row) for row in failures)
            + "</table></section>\n"
        )
    upscaled_html = (
        f'<section id="upscaled"><h2>Upscaled 2x ({len(successes)})</h2><table>'
        "<tr><th>original</th><th>result, at the same scale</th><th>details</th></tr>"
        + "".join(_success_row(output_dir, row) for row in successes)
        + "</table></section>\n"
    )
    title = f"monica-upscale demo: {len(successes)} of {len(rows)} upscaled 2x"
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{_e(title)}</h1>\n"
        '<p class="lead">Every input was sent to a local fake Monica server through '
        "<code>monica-upscale run</code>, with a rate limit and injected 429 and 5xx "
        "answers; the failures are part of the show. Each original is drawn at the same "
        "scale as its result, so a result shows twice as wide and tall; click a picture "
        f"for its full-size file. Records: {_link(RESULTS, RESULTS)}; input list: "
        f"{_link(INPUT_LIST, INPUT_LIST)}.</p>\n"
        + _summary(figures, failures, rate)
        + "\n"
        + failed_html
        + upscaled_html
        + "</body>\n</html>\n"
    )
    path = output_dir / GALLERY
    path.write_text(page, encoding="utf-8")
    return path
