#!/usr/bin/env python3
"""Where one decode step's kernel time goes, from an ncu CSV of per-launch rows.

Takes the CSV that `ncu --csv --metrics gpu__time_duration.sum[,...] ultramem-cuda-bench ...`
prints (one row per launch and metric), finds the last whole decode step in it (the launches from
one embedding kernel to the next) and prints that step's kernels grouped by name, largest total
first, with their grids:

    UM_CUDA_PDL=0 ncu --clock-control none --launch-skip 9000 --launch-count 400 --csv \\
        --metrics gpu__time_duration.sum ultramem-cuda-bench --model DIR --batches 64 \\
        --context 512 --iters 1 --chain_kernels 0 > ncu.csv
    bench/gpu/ncu_step.py ncu.csv

(The skip passes the prefill of 64 sequences; 400 launches hold about three steps.) Each kernel
runs alone under ncu with the caches flushed, so the sum is more than a replayed step takes.
"""
import argparse
import collections
import csv
import re
import sys


def read_launches(path):
    """[(kernel name, grid, microseconds)] in launch order."""
    with open(path, errors="replace") as f:
        lines = [l for l in f if l.startswith('"')]
    launches = collections.OrderedDict()
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
        unit = r.get("Metric Unit", "ns")
        if unit not in scale:
            sys.exit(f"{path}: unknown unit {unit!r} for gpu__time_duration.sum")
        us = float(r["Metric Value"].replace(",", "")) * scale[unit]
        launches[r["ID"]] = (r["Kernel Name"], r.get("Grid Size", ""), us)
    return list(launches.values())


def last_step(launches, marker):
    """The launches from the second-to-last marker kernel up to the last one."""
    starts = [i for i, (name, _, _) in enumerate(launches) if re.search(marker, name)]
    if len(starts) < 2:
        return None
    return launches[starts[-2]:starts[-1]]


def short(name):
    name = re.sub(r"\(.*", "", name)
    name = re.sub(r"^void ", "", name)
    return re.sub(r"ultramem::(cuda::)?(<unnamed>::|\(anonymous namespace\)::)?", "", name)[:70]


def group(step):
    """{short name: [launches, total us, grid]}, largest total first."""
    groups = collections.OrderedDict()
    for name, grid, us in step:
        g = groups.setdefault(short(name), [0, 0.0, grid])
        g[0] += 1
        g[1] += us
    return sorted(groups.items(), key=lambda kv: -kv[1][1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--marker", default="EmbedKernel", help="the kernel that starts a step (regex)")
    args = ap.parse_args()
    step = last_step(read_launches(args.csv), args.marker)
    if step is None:
        sys.exit(f"{args.csv}: fewer than two {args.marker} launches, so no whole step (launch-skip/count?)")
    total = sum(us for _, _, us in step)
    print(f"one step: {len(step)} kernels, {total:.1f} us of kernel time (each kernel alone, caches flushed)")
    for name, (n, us, grid) in group(step):
        print(f"{us:8.1f} us {n:4d} x {us / n:6.2f}  {grid:>14}  {name}")


if __name__ == "__main__":
    main()
