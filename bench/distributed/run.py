"""Decode step time with the memory layers on 4 memory servers (loopback TCP, rows split in 4)
against in-process, at batch 1 and 16, in one run; and the share of lookup time hidden behind the
skipped blocks.

  /usr/bin/python3 bench/distributed/run.py [--build build] [--config bench/engine/small.json]
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests"))
from cluster import Cluster  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("--config", default="bench/engine/small.json")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    config = json.load(open(args.config))
    N = config["memory"]["knum"] ** 2
    with Cluster(os.path.abspath(args.build)) as c:
        model = c.make_checkpoint("model", config)
        addrs = []
        for s in range(args.shards):
            rows = (N * s // args.shards, N * (s + 1) // args.shards)
            store = c.import_store(model, c.path("store-%d" % s), "bench", rows=rows)
            addrs.append((rows, c.start_memory_server(store)[1]))
        smap = c.path("shards.pbtxt")
        with open(smap, "w") as f:
            f.write('model_id: "bench"\n')
            for (rows, addr) in addrs:
                f.write('shards { name: "s%d" block { row_begin: %d row_end: %d } replicas: "%s" }\n'
                        % (rows[0], rows[0], rows[1], addr))

        def bench(batch, remote):
            extra = ["--shard-map", smap] if remote else []
            r = c.run("ultramem-bench-decode", "--model", model, "--batch", batch, "--steps",
                      args.steps, "--threads", args.threads, *extra)
            return json.loads(r.stdout)

        print("| batch | in-process ms/step | distributed ms/step | ratio | lookup ms/step | waited ms/step | hidden |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for batch in (1, 16):
            local = bench(batch, False)
            dist = bench(batch, True)
            print("| %d | %.3f | %.3f | %.2f | %.3f | %.3f | %.0f%% |" % (
                batch, local["step_ms"], dist["step_ms"], dist["step_ms"] / local["step_ms"],
                dist["lookup_ms_per_step"], dist["wait_ms_per_step"], 100 * dist["hidden_share"]))


if __name__ == "__main__":
    main()
