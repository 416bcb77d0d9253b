#!/usr/bin/env python3
"""Summarizes an ncu CSV (one row per kernel and metric, as `ncu --csv --metrics ...` prints) for
the last decode step it holds: the kernels after the last embedding kernel, in launch order, with
their grids, durations and the other metrics; then the same grouped by kernel name.

Usage: ncu_step.py FILE.csv [MARKER_REGEX]   (MARKER_REGEX: the kernel that starts a step; Embed)
"""
import collections
import csv
import re
import sys

path = sys.argv[1]
marker = re.compile(sys.argv[2] if len(sys.argv) > 2 else "Embed")
lines = [l for l in open(path, errors="replace") if l.startswith('"')]
kernels = collections.OrderedDict()
for r in csv.DictReader(lines):
    k = kernels.setdefault(r["ID"], {"name": r["Kernel Name"], "grid": r.get("Grid Size", ""), "m": {}})
    k["m"][r["Metric Name"]] = r["Metric Value"].replace(",", "")
ks = list(kernels.values())
starts = [i for i, k in enumerate(ks) if marker.search(k["name"])]
if len(starts) >= 2:
    ks = ks[starts[-2]:starts[-1]]  # the last whole step
elif starts:
    ks = ks[starts[-1]:]


def short(name):
    name = re.sub(r"\(.*", "", name)
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"ultramem::cuda::(\(anonymous namespace\)::)?", "", name)
    return name[:60]


total = 0.0
groups = collections.OrderedDict()
for k in ks:
    us = float(k["m"].get("gpu__time_duration.sum", "nan")) / 1000.0
    total += us
    extra = " ".join(f"{n.split('.')[0].split('__')[-1]}={v}" for n, v in k["m"].items() if n != "gpu__time_duration.sum")
    print(f"{us:8.2f} us  {k['grid']:>14}  {short(k['name'])}  {extra}")
    g = groups.setdefault(short(k["name"]), [0, 0.0])
    g[0] += 1
    g[1] += us
print(f"step: {len(ks)} kernels, {total:.1f} us of kernel time (each kernel alone, caches flushed)")
for name, (n, us) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
    print(f"{us:8.1f} us {n:4d} x {us / n:7.2f}  {name}")
