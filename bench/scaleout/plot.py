#!/usr/bin/env python3
"""Tokens/s against memory shards from bench/scaleout/run.sh's scaleout.jsonl.

    /usr/bin/python3 bench/scaleout/plot.py bench/scaleout/scaleout.jsonl bench/scaleout/tokens_per_s.png [TITLE]

One panel per model; one line per batch size; the in-process engine (shards 0 in the file) as a
dashed level where it was measured.
"""
import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst, title=None):
    rows = [json.loads(line) for line in open(src) if line.strip()]
    models = sorted({r["model"] for r in rows}, key=lambda m: (m != "fits", m))
    fig, axes = plt.subplots(1, len(models), figsize=(max(8, 6 * len(models)), 4.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        by_batch = defaultdict(list)
        local = {}
        for r in rows:
            if r["model"] != model:
                continue
            if r["shards"] == 0:
                local[r["batch"]] = r["tokens_per_s"]
            else:
                by_batch[r["batch"]].append((r["shards"], r["tokens_per_s"]))
        for i, batch in enumerate(sorted(by_batch)):
            pts = sorted(by_batch[batch])
            color = f"C{i}"
            ax.plot([s for s, _ in pts], [t for _, t in pts], "o-", color=color, label=f"batch {batch}")
            if batch in local:
                ax.axhline(local[batch], color=color, linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        shards = sorted({s for v in by_batch.values() for s, _ in v})
        ax.set_xticks(shards, [str(s) for s in shards])
        ax.set_xlabel("memory shards (processes)")
        ax.set_ylabel("decode tokens / s")
        names = {"fits": "36 GiB of values (dashed: in-process)", "large": "144 GiB of values"}
        ax.set_title(f"{model}: {names.get(model, model)}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
