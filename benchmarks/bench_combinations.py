"""Defaults that compose: limiters, automatic concurrency and Redis together.

Two tables, every figure from the fake server's side (``_scenarios.py``):

1. **The cases of issue 22**, as a user meets them with every default: the automatic
   concurrency under a binding ``RateLimit(30)`` and ``RedisRateLimit(30)`` at 20 ms
   per call; three processes sharing ``RedisRateLimit(30)`` at 2-4 s per call (and one
   process at 2 s) while Redis stays up; three processes at 20 ms through a
   redis-server SIGKILL and restart; 5% random 429s at 20-80 ms with no real limit
   (the default client's wall time over a non-binding ``RateLimit``'s).
2. **The combination matrix**: limiter (none given, ``RateLimit(30)``,
   ``AdaptiveRateLimit(start=45)``, ``RedisRateLimit(30)`` shared by three
   processes) x concurrency (automatic, fixed 16) x server (a 30 per second limit, 8
   in flight, 5% random 429s, 5% dropped connections, a Redis outage) x latency
   (20-80 ms; 2-4 s), each judged by the rules in ``_scenarios.py``.

    python -m benchmarks --only combinations

Needs a ``redis-server`` binary (``$REDIS_SERVER`` or PATH) and the ``redis`` extra.
"""

from __future__ import annotations

import itertools
from typing import Any

from ._common import Json, Table
from ._scenarios import Scenario, Verdict, run_scenario

NAME = "combinations"

#: The shared limit of every scenario, per second.
RATE = 30
LIMITERS: dict[str, Json] = {
    "none given": {"limiter": "default"},
    "RateLimit(30)": {"limiter": "ratelimit", "requests": RATE},
    "AdaptiveRateLimit(start=45)": {"limiter": "adaptive", "start": 1.5 * RATE},
    "RedisRateLimit(30) x3": {"limiter": "redis", "requests": RATE},
}
CONCURRENCIES: dict[str, int | None] = {"auto": None, "fixed 16": 16}
SERVERS: dict[str, tuple[str, ...]] = {
    "30/s": ("--rate-limit", f"{RATE}/s"),
    "8 in flight": ("--max-concurrency", "8"),
    "5% 429s": ("--fault-rate", "0.05", "--faults", "http_429"),
    "5% drops": ("--fault-rate", "0.05", "--faults", "drop"),
    "Redis outage": ("--rate-limit", f"{RATE}/s"),
}


def latencies(scale: float) -> dict[str, str]:
    """The two latencies; the realistic one divided by *scale* (time-scaled)."""
    return {"20-80 ms": "0.02,0.08", "2-4 s": f"{2 / scale:g},{4 / scale:g}"}


def matrix(
    seconds: float, scale: float = 1.0, outage_seconds: float | None = None
) -> list[Scenario]:
    """Every combination; inputs are taken for *seconds* (with a Redis outage, for
    *outage_seconds*: killed a third of the way in, restarted at two thirds)."""
    out = []
    for (limiter, client), (conc, fixed), (server, options), (lat, arg) in itertools.product(
        LIMITERS.items(), CONCURRENCIES.items(), SERVERS.items(), latencies(scale).items()
    ):
        shared = client["limiter"] == "redis"
        if server == "Redis outage" and not shared:
            continue  # nothing to take away
        bounded = client["limiter"] in ("ratelimit", "redis")
        length = seconds
        if server == "Redis outage":
            length = outage_seconds or seconds
        out.append(
            Scenario(
                label=f"{limiter}, {conc}, {server}, {lat}",
                server=("--latency", arg, *options),
                client={**client, "concurrency": fixed},
                processes=3 if shared else 1,
                seconds=length,
                outage=(length / 3, 2 * length / 3) if server == "Redis outage" else None,
                # Three processes on a shared machine: a start of scheduling jitter.
                bound=(RATE + shared) if bounded else None,
                switch_bound=RATE + RATE // 3 if bounded else None,
                deadline=length + 60,
            )
        )
    return out


def issue_rows(quick: bool) -> dict[str, Scenario]:
    """The cases of issue 22's table (shorter under *quick*)."""
    k = 0.5 if quick else 1.0
    redis_one = {"limiter": "redis", "requests": RATE}
    return {
        "RateLimit(30), 20 ms, 8 s": Scenario(
            label="RateLimit(30), 20 ms",
            server=("--latency", "0.02"),
            client={"limiter": "ratelimit", "requests": RATE},
            seconds=8 * k,
            bound=RATE,
        ),
        "RedisRateLimit(30), 20 ms, 8 s": Scenario(
            label="RedisRateLimit(30), 20 ms",
            server=("--latency", "0.02"),
            client=redis_one,
            seconds=8 * k,
            bound=RATE,
        ),
        "3 processes, RedisRateLimit(30), 2-4 s": Scenario(
            label="3 processes, 2-4 s",
            server=("--latency", "2,4"),
            client=redis_one,
            processes=3,
            seconds=15 * k,
            bound=RATE + 1,
        ),
        "1 process, RedisRateLimit(30), 2 s": Scenario(
            label="1 process, 2 s",
            server=("--latency", "2"),
            client=redis_one,
            seconds=15 * k,
            bound=RATE,
        ),
        "3 processes, 20 ms, Redis killed at 10 s, back at 20 s": Scenario(
            label="3 processes, outage",
            server=("--latency", "0.02"),
            client=redis_one,
            processes=3,
            seconds=30 * k,
            outage=(10 * k, 20 * k),
            bound=RATE + 1,  # three processes on a shared machine: a start of jitter
            switch_bound=RATE + RATE // 3,
            deadline=30 * k + 60,
        ),
    }


def random_429s(quick: bool) -> dict[str, Verdict]:
    """5% random 429s at 20-80 ms, no real limit: the default client and RateLimit(1000)."""
    count = 300 if quick else 1000
    server = ("--latency", "0.02,0.08", "--fault-rate", "0.05", "--faults", "http_429")
    clients = {
        "default": {"limiter": "default"},
        "RateLimit(1000)": {"limiter": "ratelimit", "requests": 1000},
    }
    return {
        name: run_scenario(Scenario(label=name, server=server, client=client, images=count))
        for name, client in clients.items()
    }


def _row(verdict: Verdict) -> Json:
    return {
        "label": verdict.scenario.label,
        "wall": verdict.wall,
        "inputs": verdict.inputs,
        "failed": verdict.failed,
        "errors": verdict.errors,
        "windows": verdict.windows,
        "bound": verdict.scenario.bound,
        "most_attempts": verdict.most_attempts,
        "false_outages": verdict.false_outages,
        "hung": verdict.hung,
        "refused_per_accepted": verdict.refused_per_accepted,
        "concurrency_peak": verdict.concurrency_peak,
        "concurrency_final": verdict.concurrency_final,
        "reasons": verdict.reasons,
        "problems": verdict.problems(),
    }


PARTS = ("issue", "429", "matrix")


def run(quick: bool, parts: tuple[str, ...] = PARTS, only: str = "") -> Json:
    """Issue 22's cases, the random 429s and the matrix (a few of it under *quick*)."""
    rows = {}
    if "issue" in parts:
        rows = {n: _row(run_scenario(s)) for n, s in issue_rows(quick).items() if only in n}
    faults = {}
    if "429" in parts:
        faults = {name: _row(v) for name, v in random_429s(quick).items()}
    cells = []
    if "matrix" in parts:
        scenarios = matrix(4.0 if quick else 12.0, scale=4.0 if quick else 1.0)
        if quick:
            scenarios = scenarios[::9]
        cells = [_row(run_scenario(s)) for s in scenarios if only in s.label]
    return {"issue": rows, "random_429s": faults, "matrix": cells}


def _window(row: Json) -> str:
    return " / ".join(str(n) for n in row["windows"].values())


def table(result: Json) -> str:
    """Render :func:`run`'s result."""
    issue = Table(
        "Defaults together: issue 22's cases (server side)",
        ["case", "worst window(s)", "peak / final conc", "false outages", "hung", "problems"],
    )
    for name, row in result["issue"].items():
        issue.add(
            name,
            _window(row),
            f"{row['concurrency_peak']} / {row['concurrency_final']}",
            row["false_outages"],
            row["hung"],
            "; ".join(row["problems"]) or "none",
        )
    faults = result["random_429s"]
    if faults:
        default, limited = faults["default"], faults["RateLimit(1000)"]
        issue.note(
            f"5% random 429s, 20-80 ms, no real limit, {default['inputs']} inputs: default "
            f"{default['wall']:.1f} s, RateLimit(1000) {limited['wall']:.1f} s, ratio "
            f"{default['wall'] / limited['wall']:.2f}"
        )
    issue.note(
        "worst window(s): most attempts at the server in any 1 s (with the outage: before, "
        "at the kill, during, from the restart)"
    )
    grid = Table(
        "Combination matrix (server side)",
        [
            "limiter, concurrency, server, latency",
            "worst",
            "inputs",
            "failed",
            "most att.",
            "429/ok",
            "peak conc",
            "wall s",
            "verdict",
        ],
    )
    for row in result["matrix"]:
        grid.add(
            row["label"],
            _window(row),
            row["inputs"],
            row["failed"],
            row["most_attempts"],
            row["refused_per_accepted"],
            row["concurrency_peak"],
            row["wall"],
            "; ".join(row["problems"]) or "ok",
        )
    return issue.render() + "\n\n" + grid.render()


def main(argv: Any = None) -> None:
    """``python -m benchmarks.bench_combinations [--quick] [--only TEXT]``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default=",".join(PARTS), help="of issue,429,matrix (all)")
    parser.add_argument("--only", default="", help="run the cases whose label contains this")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    result = run(args.quick, tuple(args.parts.split(",")), args.only)
    print(table(result))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
