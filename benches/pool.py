#!/usr/bin/env python3
"""Pools the paired echo ratios of several benchmark runs.

Each run's echo CSV (written by `cargo bench --bench echo -- echo`) has one row per cell:
a round, a server, a load. A paired ratio is copas's rate in a round divided by another
server's rate in the same round. One run gives 8 to 16 of them, and on a shared 2-core
machine its median moves by several percent from run to run; pooling the rounds of several
runs narrows that. For each load and peer this prints, per run and pooled, the median of the
paired ratios and a 95 % bootstrap interval of that median (rounds resampled, fixed seed, so
the output is repeatable).

    python3 benches/pool.py docs/benchmarks-echo-data/echo.csv \\
        docs/benchmarks-echo-data/run9/echo.csv docs/benchmarks-echo-data/run10/echo.csv \\
        docs/benchmarks-echo-data/run11/echo.csv

Only pool runs of comparable code and method: a run whose server order was fixed (run 7
and earlier) measured the order as much as the servers.
"""

import csv
import random
import statistics
import sys

RESAMPLES = 10_000


def load(path):
    """(round, server, conns) -> messages/s of one run's CSV."""
    with open(path, newline="") as f:
        return {
            (int(r["round"]), r["server"], int(r["conns"])): float(r["msgs_per_s"])
            for r in csv.DictReader(f)
        }


def paired(cells, conns, server, peer):
    """The per-round ratios server / peer at one load."""
    return [
        rate / cells[(rnd, peer, c)]
        for (rnd, s, c), rate in sorted(cells.items())
        if s == server and c == conns and (rnd, peer, c) in cells
    ]


def interval(ratios, rng):
    """95 % bootstrap interval of the median."""
    medians = sorted(
        statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(RESAMPLES)
    )
    return medians[int(0.025 * RESAMPLES)], medians[int(0.975 * RESAMPLES)]


def main(paths):
    if not paths:
        sys.exit(__doc__)
    runs = [(p, load(p)) for p in paths]
    loads = sorted({c for _, cells in runs for (_, _, c) in cells})
    print("| load | copas vs | run | rounds | median | 95 % interval of the median |")
    print("|---|---|---|---|---|---|")
    for conns in loads:
        for peer in ("polling", "tokio"):
            rng = random.Random(1)
            pooled = []
            for path, cells in runs:
                ratios = paired(cells, conns, "copas", peer)
                if not ratios:
                    continue
                pooled += ratios
                lo, hi = interval(ratios, rng)
                median = statistics.median(ratios)
                print(f"| C={conns} | {peer} | {path} | {len(ratios)} | {median:.3f} | {lo:.3f}..{hi:.3f} |")
            if pooled:
                lo, hi = interval(pooled, rng)
                median = statistics.median(pooled)
                print(f"| C={conns} | {peer} | **pooled** | {len(pooled)} | **{median:.3f}** | {lo:.3f}..{hi:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
