#!/usr/bin/env python3
"""Per round at each load: copas ÷ loop rate, and copas − loop sleeps per 1,000 messages (server,
generator); Spearman rank correlations between the ratio and each difference, and the medians of
each server's sleeps. Usage: sleepcorr.py echo.csv"""
import csv, statistics, sys, collections

def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r

def spearman(x, y):
    rx, ry = ranks(x), ranks(y)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den if den else float("nan")

rows = list(csv.DictReader(open(sys.argv[1])))
by = collections.defaultdict(dict)
for r in rows:
    by[(int(r["conns"]), int(r["round"]))][r["server"]] = r
for conns in sorted({c for c, _ in by}):
    print(f"C={conns}: medians of sleeps per 1,000 messages (server / generator)")
    for s in ("copas", "polling", "tokio", "may"):
        v = [by[k][s] for k in by if k[0] == conns and s in by[k]]
        if v:
            print(f"  {s}: {statistics.median(float(x['server_sleeps_per_kmsg']) for x in v):.2f} / "
                  f"{statistics.median(float(x['load_sleeps_per_kmsg']) for x in v):.2f}")
    ratio, dsrv, dgen = [], [], []
    for k in sorted(by):
        if k[0] != conns or "copas" not in by[k] or "polling" not in by[k]:
            continue
        c, p = by[k]["copas"], by[k]["polling"]
        ratio.append(float(c["msgs_per_s"]) / float(p["msgs_per_s"]))
        dsrv.append(float(c["server_sleeps_per_kmsg"]) - float(p["server_sleeps_per_kmsg"]))
        dgen.append(float(c["load_sleeps_per_kmsg"]) - float(p["load_sleeps_per_kmsg"]))
    print(f"  rounds {len(ratio)}: Spearman(copas÷loop, server sleeps copas−loop) = {spearman(ratio, dsrv):+.2f}; "
          f"Spearman(copas÷loop, generator sleeps copas−loop) = {spearman(ratio, dgen):+.2f}")
