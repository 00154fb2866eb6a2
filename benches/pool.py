#!/usr/bin/env python3
"""Pools the paired echo ratios of several benchmark runs.

Each run's echo CSV (written by `cargo bench --bench echo -- echo`) has one row per cell:
a round, a server, a load. A paired ratio is copas's rate in a round divided by another
server's rate in the same round. One run gives 8 to 16 of them, and on a shared 2-core
machine its median moves by several percent from run to run; pooling the rounds of several
runs narrows that. For each load and peer this prints, per run and pooled, the median of the
paired ratios and a 95 % bootstrap interval of that median (rounds resampled, fixed seed, so
the output is repeatable).

    python3 benches/pool.py [--svg OUT.svg] [--costs] [--hosts] docs/benchmarks-echo-data/echo.csv \\
        docs/benchmarks-echo-data/run9/echo.csv docs/benchmarks-echo-data/run10/echo.csv \\
        docs/benchmarks-echo-data/run11/echo.csv

With --svg it also draws the pooled ratios (docs/benchmarks-pooled.svg), with
benches/chart.py's panels: a bar per load and peer, the interval as a whisker, 1.0 marked.
With --pairs A/B[,C/D...] it pools those ratios instead of copas against polling and tokio
(e.g. --pairs coro_floor/polling,copas/coro_floor: the coroutine floor against the loop).
With --costs it also pools, for the same pairs, the per-round differences of the server's
CPU time per message and of its user and kernel parts (A minus B, µs), and of the load
generator's CPU time per message while it drove each, to see where a gap in the rate is
spent: in the default runs both sides run near saturation on two cores, so either one's cost
can bound the rate.
Where the CSVs record them (runs after 64), it pools the differences of the server's and
the generator's sleeps per 1,000 messages too: the side that sleeps has time to spare.

Only pool runs of comparable code and method: a run whose server order was fixed (run 7
and earlier) measured the order as much as the servers. A run whose servers were capped to a
share of their CPU (`ECHO_SERVER_SHARE`, the CSV's `server_share_pct`; runs capped60-4e1d472
and capped60-rep) ran in another regime, and is pooled only with runs capped alike: the
script stops when the CSVs disagree. Its rates are servers' capacities only in cells whose
server never slept (`server_sleeps_per_kmsg` 0).
"""

import csv
import os
import random
import re
import statistics
import sys

RESAMPLES = 10_000


def cells(path, value):
    """(round, server, conns) -> value(row) for each row of one run's CSV; rows without the
    columns `value` reads (an older CSV) are left out."""
    out = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            try:
                out[(int(r["round"]), r["server"], int(r["conns"]))] = value(r)
            except (KeyError, ValueError):
                continue
    return out


def host_of(path):
    """The CPU a run's CSV was measured on, from the host.txt beside it: "family F model M",
    or "unrecorded"."""
    try:
        with open(os.path.join(os.path.dirname(path), "host.txt")) as f:
            text = f.read()
    except OSError:
        return "unrecorded"
    found = re.search(r"family (\d+) model (\d+)", text)
    return f"family {found.group(1)} model {found.group(2)}" if found else "unrecorded"


def print_hosts(runs, loads, labelled):
    """The paired ratios pooled per CPU (see host_of)."""
    hosts = {}
    for path, cells in runs:
        hosts.setdefault(host_of(path), []).append(cells)
    print()
    print("| load | ratio | CPU | runs | rounds | median | 95 % interval of the median |")
    print("|---|---|---|---|---|---|---|")
    for conns in loads:
        for (server, peer), _ in labelled:
            for host, group in sorted(hosts.items()):
                rng = random.Random(1)
                per_run = [paired(cells, conns, server, peer) for cells in group]
                pooled = [r for ratios in per_run for r in ratios]
                if not pooled:
                    continue
                median, lo, hi = summary(pooled, rng)
                nruns = sum(1 for ratios in per_run if ratios)
                print(f"| C={conns} | {server} ÷ {peer} | {host} | {nruns} | {len(pooled)} | {median:.3f} | {lo:.3f}..{hi:.3f} |")


def share_of(path):
    """The percentage of its CPU the run's servers were capped to; 100 (no cap) for the CSVs
    written before the column existed."""
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            return int(r.get("server_share_pct") or 100)
    return 100


def load(path):
    """(round, server, conns) -> messages/s of one run's CSV."""
    return cells(path, lambda r: float(r["msgs_per_s"]))


def costs_of(row):
    """(server CPU, user, kernel, load generator CPU) µs per message of one CSV row.

    The generator's is its CPU share over the measured window divided by the rate: in a closed
    loop on two cores its cost per message bounds the rate as much as the server's does."""
    cpu, user = float(row["cpu_us_per_msg"]), float(row["user_us_per_msg"])
    generator = float(row["load_cpu_pct"]) / 100 / float(row["msgs_per_s"]) * 1e6
    return (cpu, user, cpu - user, generator)


def sleeps_of(row):
    """(server, load generator) sleeps per 1,000 messages of one CSV row (runs after 64; run
    65's server column counts main threads only, so `may`'s reads 0 there)."""
    return (float(row["server_sleeps_per_kmsg"]), float(row["load_sleeps_per_kmsg"]))


def print_costs(paths, loads, pairs):
    """Pooled per-round differences of CPU per message between the servers of each pair, and
    of the two sides' sleeps where the CSVs record them."""
    print()
    print(
        "| load | difference (µs per message) | rounds | server CPU | user | kernel "
        "| load generator CPU |"
    )
    print("|---|---|---|---|---|---|---|")
    print_differences([cells(p, costs_of) for p in paths], loads, pairs, "{:+.3f}")
    sleeps = [cells(p, sleeps_of) for p in paths]
    if any(sleeps):
        # In a closed loop the side that sleeps is the one with time to spare.
        print()
        print("| load | difference (sleeps per 1,000 messages) | rounds | server | load generator |")
        print("|---|---|---|---|---|")
        print_differences(sleeps, loads, pairs, "{:+.2f}")


def print_differences(runs, loads, pairs, fmt):
    """One table row per load and pair: the pooled per-round differences (server's value
    minus peer's, column by column) with their medians and 95 % intervals."""
    for conns in loads:
        for server, peer in pairs:
            diffs = [
                tuple(a - b for a, b in zip(value, cells[(rnd, peer, c)]))
                for cells in runs
                for (rnd, s, c), value in sorted(cells.items())
                if s == server and c == conns and (rnd, peer, c) in cells
            ]
            if not diffs:
                continue
            rng = random.Random(1)
            figures = []
            for i in range(len(diffs[0])):
                median, lo, hi = summary([d[i] for d in diffs], rng)
                figures.append(f"{fmt.format(median)} [{fmt.format(lo)}..{fmt.format(hi)}]")
            print(f"| C={conns} | {server} − {peer} | {len(diffs)} | " + " | ".join(figures) + " |")


def paired(cells, conns, server, peer):
    """The per-round ratios server / peer at one load."""
    return [
        rate / cells[(rnd, peer, c)]
        for (rnd, s, c), rate in sorted(cells.items())
        if s == server and c == conns and (rnd, peer, c) in cells
    ]


def summary(values, rng):
    """The median of `values` and the 95 % bootstrap interval of it."""
    lo, hi = interval(values, rng)
    return statistics.median(values), lo, hi


def interval(ratios, rng):
    """95 % bootstrap interval of the median."""
    medians = sorted(
        statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(RESAMPLES)
    )
    return medians[int(0.025 * RESAMPLES)], medians[int(0.975 * RESAMPLES)]


def main(args):
    svg_out = None
    pairs = None
    switches = set()
    while args[:1] in (["--svg"], ["--pairs"], ["--costs"], ["--hosts"]):
        if args[0] in ("--costs", "--hosts"):
            switches.add(args[0])
            args = args[1:]
            continue
        if len(args) < 2:
            sys.exit(__doc__)
        if args[0] == "--svg":
            svg_out = args[1]
        else:
            pairs = [tuple(p.split("/", 1)) for p in args[1].split(",")]
            if any(len(p) != 2 for p in pairs):
                sys.exit(__doc__)
        args = args[2:]
    # The default pairs keep the peer's name as the series label (the published chart's).
    labelled = [(("copas", peer), peer) for peer in ("polling", "tokio")]
    if pairs:
        labelled = [((a, b), f"{a} ÷ {b}") for a, b in pairs]
    paths = args
    if not paths:
        sys.exit(__doc__)
    shares = {p: share_of(p) for p in paths}
    if len(set(shares.values())) > 1:
        sys.exit("runs with different caps on the servers' CPU (server_share_pct): "
                 + ", ".join(f"{p}: {s} %" for p, s in shares.items()))
    share = shares[paths[0]]
    if share != 100:
        print(f"servers capped to {share} % of their CPU: a capacity where the server never slept")
        print()
    pooled_figures = {}
    runs = [(p, load(p)) for p in paths]
    loads = sorted({c for _, cells in runs for (_, _, c) in cells})
    print("| load | ratio | run | rounds | median | 95 % interval of the median |")
    print("|---|---|---|---|---|---|")
    for conns in loads:
        for (server, peer), label in labelled:
            rng = random.Random(1)
            pooled = []
            for path, cells in runs:
                ratios = paired(cells, conns, server, peer)
                if not ratios:
                    continue
                pooled += ratios
                median, lo, hi = summary(ratios, rng)
                print(f"| C={conns} | {server} ÷ {peer} | {path} | {len(ratios)} | {median:.3f} | {lo:.3f}..{hi:.3f} |")
            if pooled:
                median, lo, hi = summary(pooled, rng)
                print(f"| C={conns} | {server} ÷ {peer} | **pooled** | {len(pooled)} | **{median:.3f}** | {lo:.3f}..{hi:.3f} |")
                pooled_figures.setdefault(label, {})[f"C={conns}"] = dict(mid=median, lo=lo, hi=hi)
    if "--hosts" in switches:
        print_hosts(runs, loads, labelled)
    if "--costs" in switches:
        print_costs(paths, loads, [pair for pair, _ in labelled])
    if svg_out:
        draw(svg_out, pooled_figures, len(runs), [f"C={c}" for c in loads])


def draw(out, series, nruns, groups):
    """One panel: copas ÷ each peer, pooled paired median and interval per load."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import chart

    order = list(series)
    width, height = chart.PANEL_W + 40, chart.PANEL_H + 34
    svg = chart.Svg()
    svg.add(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">')
    svg.rect(0, 0, width, height, "white")
    chart.panel(svg, 20, 0, "echo: copas ÷ peer, same round", "ratio of msgs/s", groups, series,
                order, f"paired rounds of {nruns} runs pooled: median, 95 % interval", ref=1.0)
    lx, ly = 20, chart.PANEL_H + 18
    for s in order:
        svg.rect(lx, ly - 9, 11, 11, chart.color(s, order))
        svg.text(lx + 15, ly, f"÷ {s}", size=11)
        lx += 40 + 7.5 * len(s)
    svg.add("</svg>")
    with open(out, "w") as f:
        f.write("\n".join(svg.parts) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
