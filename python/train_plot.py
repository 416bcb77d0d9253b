"""Plots the training curves of issue 7's three models (train loss and held-out bits per byte).

  /usr/bin/python3 python/train_plot.py models/ultramem-tiny/training models/ultramem-tiny/training_curves.png
"""

import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LABELS = {"ultramem": "UltraMem (15.2M params)", "dense": "dense, equal compute (6.9M)",
          "moe": "MoE top-2 of 5, equal compute (14.5M)"}


def main(log_dir, out_png):
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, color in (("ultramem", "tab:blue"), ("dense", "tab:orange"), ("moe", "tab:green")):
        path = os.path.join(log_dir, f"{name}_loss.jsonl")
        recs = [json.loads(line) for line in open(path)]
        tok = [r["tokens"] / 1e6 for r in recs]
        ax1.plot(tok, [r["train_bpb"] for r in recs], color=color, lw=0.8, label=LABELS[name])
        ev = [r for r in recs if "heldout_bpb" in r]
        ax2.plot([r["tokens"] / 1e6 for r in ev], [r["heldout_bpb"] for r in ev], "o-",
                 color=color, ms=3, label=LABELS[name])
    for ax, title in ((ax1, "training loss (batch, bf16)"), (ax2, "held-out (every 100 steps)")):
        ax.set_xlabel("training tokens (millions)")
        ax.set_ylabel("bits per byte")
        ax.set_title(title)
        ax.set_ylim(1.3, 3.0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("issue 7: byte-level models on KJV Bible + fortunes (6.5 MB), 1200 steps x 32768 tokens")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    print(out_png)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
