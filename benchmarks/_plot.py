"""The results as one PNG: a panel per benchmark."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write files only

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from ._common import Json

MIB = 1024 * 1024


def _short(name: str) -> str:
    return (
        name.replace("monica-async", "monica")
        .replace(" (default limiter)", " default")
        .replace("gather+semaphore", "gather")
        .replace(" (aiohttp)", "")
    )


def _throughput(ax: Axes, result: Json) -> None:
    groups = result["by_concurrency"]
    names = list(next(iter(groups.values())))
    width = 0.8 / len(groups)
    for i, (concurrency, rows) in enumerate(groups.items()):
        xs = [j + i * width for j in range(len(names))]
        ax.bar(xs, [rows[n]["ratio"] for n in names], width, label=f"concurrency {concurrency}")
    ax.axhline(0.75, color="black", linestyle="--", linewidth=1, label="target 0.75")
    ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(names))])
    ax.set_xticklabels([_short(n) for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("best throughput / raw aiohttp workers' best")
    ax.set_title("Throughput, zero latency")
    ax.legend(fontsize=7)


def _latency(ax: Axes, result: Json) -> None:
    names = list(result["rows"])
    ax.bar(range(len(names)), [result["rows"][n]["efficiency"] for n in names], color="tab:green")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([_short(n) for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("rate / (concurrency / latency)")
    ax.set_title(f"Latency-bound efficiency ({result['latency'] * 1000:.0f} ms)")


def _limiter(ax: Axes, result: Json) -> None:
    for name, row in result["rows"].items():
        xs = [point[0] for point in row["series"]]
        ys = [point[1] for point in row["series"]]
        ax.plot(xs, ys, label=_short(name), linewidth=1)
    ax.axhline(result["rate"], color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("seconds since the first request (server clock)")
    ax.set_ylabel(f"requests in the last {result['per']:g} s")
    ax.set_title(f"Limiters at {result['rate']}/{result['per']:g} s, as the server saw them")
    ax.legend(fontsize=7)


def _ratelimited(ax: Axes, result: Json) -> None:
    names = list(result["rows"])
    ratios = [result["rows"][n]["ratio"] or 0 for n in names]
    bars = ax.bar(range(len(names)), ratios, color="tab:red")
    ax.bar_label(bars, [f"{r:.2f}" for r in ratios], fontsize=7)
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.split(")")[0] + ")" for n in names])
    ax.set_ylabel("429s per accepted request")
    ax.set_title(f"Server limit {result['server_limit']}, {result['workers']} workers")


def _memory(ax: Axes, result: Json) -> None:
    rows = result["rows"]
    counts = [row["count"] for row in rows]
    ax.plot(counts, [row["rss_peak"] / MIB for row in rows], "o-", label="peak")
    ax.plot(counts, [row["rss_start"] / MIB for row in rows], "s--", label="start")
    ax.set_xscale("log")
    ax.set_ylim(0, max(row["rss_peak"] for row in rows) / MIB * 1.3)
    ax.set_xlabel("inputs (generator)")
    ax.set_ylabel("client RSS, MiB")
    ax.set_title("Memory of upscale_many")
    ax.legend(fontsize=7)


def _faults(ax: Axes, result: Json) -> None:
    names = list(result["rows"])
    rates = [result["rows"][n]["rate"] for n in names]
    bars = ax.bar(range(len(names)), rates, color="tab:purple")
    labels = [f"{result['rows'][n]['success_rate']:.1%} ok" for n in names]
    ax.bar_label(bars, labels, fontsize=7)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([_short(n) for n in names], fontsize=8)
    ax.set_ylabel("finished inputs per second")
    ax.set_title(f"Under faults (--fault-rate {result['fault_rate']:g})")


PANELS = {
    "throughput": _throughput,
    "latency": _latency,
    "limiter": _limiter,
    "429": _ratelimited,
    "memory": _memory,
    "faults": _faults,
}


def plot(report: Json, path: Path) -> None:
    """Draw a panel for every benchmark in *report* and save the figure to *path*."""
    results = report["results"]
    panels = [(name, draw) for name, draw in PANELS.items() if name in results]
    if not panels:
        return
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.6 * rows), squeeze=False)
    for ax, (name, draw) in zip(axes.flat, panels, strict=False):
        draw(ax, results[name])
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    title = "monica-async benchmarks" + (" (--quick)" if report["quick"] else "")
    figure.suptitle(f"{title}: {report['machine']['nproc']} CPUs, {report['machine']['cpu_model']}")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
