#!/usr/bin/env python3
"""Compares profile.sh's profiles of copas and another server symbol by symbol, kernel and user
space: each symbol's share of samples times the profile's server CPU per message (ns),
the median over the profiles of each server, then the differences, largest first.

usage: cd $OUT && python3 kernel_diff.py copas-1 copas-2 ... polling-1 polling-2 ...
       (the NAME given to profile.sh; those starting with "copas" are one side, the rest the other)
"""
import collections
import statistics
import subprocess
import sys


def profile(name):
    """Server CPU per message (ns) and {(kind, symbol): ns per message} of one profile."""
    load = dict(kv.split("=") for kv in open(f"{name}.load").read().split())
    cpu = (float(load["srv_user_s"]) + float(load["srv_sys_s"])) / float(load["all_msgs"]) * 1e9
    report = subprocess.run(["perf", "report", "-i", f"{name}.data", "--stdio", "--sort", "sym"],
                            capture_output=True, text=True).stdout
    ns = collections.defaultdict(float)
    for line in report.splitlines():
        p = line.split()
        if len(p) >= 3 and p[0].endswith("%") and p[1] in ("[k]", "[.]"):
            ns[(p[1], " ".join(p[2:]))] += float(p[0][:-1]) * cpu / 100
    return cpu, ns


def median_of(profiles):
    """Per symbol and for the server CPU, the median over the profiles (one slow profile,
    as the shared host gives now and then, would move a mean in every symbol at once)."""
    keys = set().union(*[ns for _, ns in profiles])
    return {k: statistics.median(ns.get(k, 0) for _, ns in profiles) for k in keys}, \
        statistics.median(cpu for cpu, _ in profiles)


names = sys.argv[1:]
a, cpu_a = median_of([profile(n) for n in names if n.startswith("copas")])
b, cpu_b = median_of([profile(n) for n in names if not n.startswith("copas")])
print(f"server CPU ns/msg copas {cpu_a:.0f} other {cpu_b:.0f}")
for kind in ("[k]", "[.]"):
    ta = sum(v for k, v in a.items() if k[0] == kind)
    tb = sum(v for k, v in b.items() if k[0] == kind)
    print(kind, f"copas {ta:.0f} other {tb:.0f} difference {ta - tb:+.0f}")
for k in sorted(set(a) | set(b), key=lambda k: -abs(a.get(k, 0) - b.get(k, 0)))[:30]:
    print(f"{a.get(k, 0):7.1f} {b.get(k, 0):7.1f} {a.get(k, 0) - b.get(k, 0):+7.1f}  {k[0]} {k[1][:70]}")
