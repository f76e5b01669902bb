"""``python -m benchmarks``: run the benchmarks, print their tables, save JSON and a plot.

    python -m benchmarks [--quick] [--only NAME ...] [--json PATH] [--plot PATH] [--update]

``--quick`` shrinks every benchmark so that the whole run takes under a minute:
a smoke test of the programs, not figures to quote.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from types import ModuleType

from . import (
    bench_combinations,
    bench_concurrency,
    bench_faults,
    bench_latency,
    bench_limiter,
    bench_memory,
    bench_overhead,
    bench_ratelimited,
    bench_storage,
    bench_throughput,
)
from ._common import Json

RESULTS = Path(__file__).parent / "results"
MODULES: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        bench_throughput,
        bench_overhead,
        bench_latency,
        bench_limiter,
        bench_ratelimited,
        bench_concurrency,
        bench_combinations,
        bench_memory,
        bench_faults,
        bench_storage,
    )
}
#: Benchmarks whose figures do not hinge on a quiet CPU: paced by rate limits and
#: timers, or measuring memory. Under --quick they run side by side, each in its own
#: process with its own fake server, to stay under a minute (their figures get noisier).
QUICK_SIDE_BY_SIDE = ("memory", "limiter", "429", "faults")
PACKAGES = (
    "monica-async",
    "aiohttp",
    "attrs",
    "tenacity",
    "aiolimiter",
    "aiometer",
    "httpx",
    "obstore",
    "moto",
)


def machine() -> Json:
    """Where the figures come from."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                model,
            )
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "library_changes": bool(_git("status", "--porcelain", "--", "monica_async")),
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "loadavg_start": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _git(*args: str) -> str | None:
    """Output of a git command in this checkout, or None outside one."""
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def run_one(name: str, quick: bool) -> Json:
    """Run benchmark *name* here and return its result, timed."""
    began = time.perf_counter()
    result: Json = MODULES[name].run(quick)
    result["seconds"] = round(time.perf_counter() - began, 1)
    return result


def run_side_by_side(names: Sequence[str], quick: bool) -> dict[str, Json]:
    """Run benchmarks *names* at once, each in a child ``python -m benchmarks`` process."""
    with tempfile.TemporaryDirectory() as directory:
        children = {}
        for name in names:
            path = Path(directory) / f"{name}.json"
            argv = [sys.executable, "-m", "benchmarks", "--only", name, "--json", str(path)]
            argv += ["--plot", "", "--quiet"] + (["--quick"] if quick else [])
            children[name] = (subprocess.Popen(argv), path)
        results = {}
        for name, (child, path) in children.items():
            if child.wait() != 0:
                raise RuntimeError(f"benchmark {name} failed (exit status {child.returncode})")
            results[name] = json.loads(path.read_text())["results"][name]
    return results


def _merge(earlier: Json, rerun: Json) -> Json:
    """*earlier* with the benchmarks of *rerun* replaced, each marked with its own run."""
    if earlier.get("quick") != rerun["quick"]:
        raise SystemExit("--update: the JSON file holds a run of the other kind (--quick or not)")
    merged = dict(earlier)
    merged["results"] = dict(earlier["results"])
    for name, result in rerun["results"].items():
        merged["results"][name] = {**result, "rerun": rerun["machine"]}
    # In the usual order, whichever run each came from.
    merged["results"] = {n: merged["results"][n] for n in MODULES if n in merged["results"]}
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    """Parse *argv*, run the chosen benchmarks and write their results."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small runs, under a minute in all")
    parser.add_argument(
        "--only", nargs="+", choices=list(MODULES), metavar="NAME", help=", ".join(MODULES)
    )
    parser.add_argument("--json", default=str(RESULTS / "results.json"), metavar="PATH")
    parser.add_argument(
        "--plot", default=str(RESULTS / "results.png"), metavar="PATH", help="'' for none"
    )
    parser.add_argument(
        "--update",
        action="store_true",
        help="keep the other benchmarks' results already in the JSON file (rerun some only)",
    )
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = args.only or list(MODULES)
    began = time.perf_counter()
    report: Json = {"quick": args.quick, "machine": machine(), "results": {}}
    results: dict[str, Json] = report["results"]

    def show(name: str) -> None:
        if not args.quiet:
            print(MODULES[name].table(results[name]), end="\n\n", flush=True)

    side_by_side = [n for n in names if n in QUICK_SIDE_BY_SIDE] if args.quick else []
    if len(side_by_side) < 2:
        side_by_side = []
    for name in names:
        if name in side_by_side:
            continue
        results[name] = run_one(name, args.quick)
        show(name)
    if side_by_side:
        results.update(run_side_by_side(side_by_side, args.quick))
        for name in side_by_side:
            show(name)
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["seconds"] = round(time.perf_counter() - began, 1)
    report["results"] = {name: results[name] for name in names}
    summary = (
        f"{len(names)} benchmark(s) in {report['seconds']:.0f} s on {report['machine']['nproc']} "
        f"CPU(s) ({report['machine']['cpu_model']}), Python {report['machine']['python']}, "
        f"commit {report['machine']['commit']}; load average "
        f"{report['machine']['loadavg_start'][0]:.2f} at the start, "
        f"{report['machine']['loadavg_end'][0]:.2f} at the end."
    )
    if args.update and args.json and Path(args.json).exists():
        report = _merge(json.loads(Path(args.json).read_text()), report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    if args.plot:
        from ._plot import plot  # matplotlib is slow to import: only when asked

        plot(report, Path(args.plot))
    if not args.quiet:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
