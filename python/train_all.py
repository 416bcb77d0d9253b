"""Issue 7: trains the UltraMem, dense and MoE models on the same tokens, measures their held-out
bits per byte with the same code, and saves the UltraMem model plus row-access statistics.

  # on the GPU machine (one device call):
  PYTHONUNBUFFERED=1 python3 python/train_all.py --out $OUT --steps 1200
  # on a CPU, tiny settings, to check the pipeline:
  /usr/bin/python3 python/train_all.py --out /tmp/t --tiny --steps 3

Writes under --out (at most 8 files, for the device tool):
  ultramem-tiny/model-dense.safetensors, ultramem-tiny/model-memory-{0,1}-values.safetensors
  {ultramem,dense,moe}_loss.jsonl          loss logs (JSON lines, written as training goes)
  results.tar.gz                            results.json, row_access.npz, row_access.json,
                                            ultramem-tiny/{config.json, model.safetensors.index.json},
                                            dense/moe configs
Compute matching (multiply-accumulates per token, attention over the context left out: it is the
same in all three): the dense model widens every FFN by the memory layers' active MACs spread over
the blocks; the MoE model replaces every FFN by top-2 of n experts, each half the dense model's FFN
width (so active MACs = the dense model's), with n chosen so its total parameters come closest to
the UltraMem model's.
"""

import argparse
import copy
import io
import json
import math
import os
import sys
import tarfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train as T  # noqa: E402
from ultramem_ref.config import MemoryDims, make_config  # noqa: E402
from ultramem_ref.moe import make_moe_config  # noqa: E402


def base_configs(tiny, seq):
    if tiny:
        dims = dict(vocab_size=320, hidden_size=64, num_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, intermediate_size=176)
        mem = {"layers": [[0, 1], [2, 3]], "knum": 16, "value_expand": 4, "key_dim": 16,
               "value_dim": 32, "heads": 2, "topk": 8, "tucker_rank": 2, "tucker_cores": 2}
    else:
        dims = dict(vocab_size=320, hidden_size=256, num_layers=8, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=64, intermediate_size=688)
        mem = {"layers": [[1, 3], [4, 6]], "knum": 128, "value_expand": 4, "key_dim": 64,
               "value_dim": 256, "heads": 2, "topk": 32, "tucker_rank": 2, "tucker_cores": 2}
    common = dict(rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=seq,
                  tie_word_embeddings=False)
    return dims, mem, common


def dense_macs(config):
    """MACs per token outside attention scores: projections, FFNs, lm_head."""
    D, L = config["hidden_size"], config["num_layers"]
    attn = D * config["head_dim"] * (2 * config["num_attention_heads"]
                                     + 2 * config["num_key_value_heads"])
    if "moe" in config:
        moe = config["moe"]
        ffn = moe["top_k"] * 3 * D * moe["expert_size"] + D * moe["num_experts"]
    else:
        ffn = 3 * D * config["intermediate_size"]
    return L * (attn + ffn) + config["vocab_size"] * D


def memory_layer_macs(config):
    """Active MACs per token of one memory layer (MODEL.md §3 steps 1-11)."""
    d = MemoryDims(config["memory"])
    D = config["hidden_size"]
    return (2 * d.Dk * D                       # 1 query projection
            + 2 * d.H * d.n * d.r * d.Dk       # 4 row and column key scores
            + 2 * d.H * d.n * d.r              # 5 rank-1 proxies
            + d.H * d.h * d.m * d.r * (d.r + d.m)  # 7 Tucker scores of the m x m grid
            + d.H * d.m * d.Dv                 # 10 weighted pooling of H*m rows
            + d.E * d.Dv * D)                  # 11 value projection


def active_macs(config):
    mem = config.get("memory")
    return dense_macs(config) + (len(mem["layers"]) * memory_layer_macs(config) if mem else 0)


def total_params(config):
    D, L, V = config["hidden_size"], config["num_layers"], config["vocab_size"]
    attn = D * config["head_dim"] * (2 * config["num_attention_heads"]
                                     + 2 * config["num_key_value_heads"])
    if "moe" in config:
        moe = config["moe"]
        ffn = moe["num_experts"] * 3 * D * moe["expert_size"] + D * moe["num_experts"]
    else:
        ffn = 3 * D * config["intermediate_size"]
    n = L * (attn + ffn + 2 * D) + D + V * D * (1 if config["tie_word_embeddings"] else 2)
    mem = config.get("memory")
    if mem:
        d = MemoryDims(mem)
        per = (2 * d.Dk * D + 2 * d.Dk + d.H * 2 * d.n * d.Dk * d.r + d.h * d.H * d.r * d.r
               + D * d.E * d.Dv + d.N * d.Dv)
        n += len(mem["layers"]) * per
    return n


def model_configs(tiny, seq):
    dims, mem, common = base_configs(tiny, seq)
    ultramem = make_config(memory=mem, **dims, **common)
    D, L, F = dims["hidden_size"], dims["num_layers"], dims["intermediate_size"]
    extra = len(mem["layers"]) * memory_layer_macs(ultramem)
    F_dense = F + 8 * round(extra / (L * 3 * D) / 8)
    dense = make_config(memory=None, **dict(dims, intermediate_size=F_dense), **common)
    F_e = F_dense // 2
    best = None
    for n_exp in range(2, 65):
        cand = make_moe_config(dense, n_exp, F_e, 2)
        gap = abs(total_params(cand) - total_params(ultramem))
        if best is None or gap < best[0]:
            best = (gap, cand)
    moe = best[1]
    return {"ultramem": ultramem, "dense": dense, "moe": moe}


def row_access(rows_list, config):
    """Counts per physical value row and per virtual value, per memory layer, from t tensors."""
    d = MemoryDims(config["memory"])
    J = len(config["memory"]["layers"])
    rows = np.zeros((J, d.N), dtype=np.int64)
    virt = np.zeros((J, d.virtual), dtype=np.int64)
    for t in rows_list:                         # [J, B, T, H*m]
        t = t.numpy().reshape(J, -1)
        for j in range(J):
            virt[j] += np.bincount(t[j], minlength=d.virtual)
            rows[j] += np.bincount(t[j] % d.N, minlength=d.N)
    summary = []
    for j in range(J):
        c = np.sort(rows[j])[::-1]
        total = c.sum()
        share = lambda frac: float(c[:max(1, int(round(frac * d.N)))].sum() / total)  # noqa: E731
        cum = np.cumsum(c) / total
        p = c / total
        nz = p[p > 0]
        summary.append({
            "layer": j, "rows": int(d.N), "accesses": int(total),
            "top_1pct_share": share(0.01), "top_10pct_share": share(0.10),
            "top_50pct_share": share(0.50),
            "rows_never_accessed": int((rows[j] == 0).sum()),
            "rows_for_50pct_of_accesses": int(np.searchsorted(cum, 0.5) + 1),
            "rows_for_90pct_of_accesses": int(np.searchsorted(cum, 0.9) + 1),
            "max_row_count": int(c[0]), "mean_row_count": float(total / d.N),
            "entropy_bits": float(-(nz * np.log2(nz)).sum()),
            "uniform_entropy_bits": float(math.log2(d.N)),
            "gini": float(1 - 2 * np.sum(np.cumsum(np.sort(rows[j])) / total) / d.N + 1 / d.N),
        })
    return rows, virt, summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--corpus", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "..", "data", "corpus"))
    p.add_argument("--tiny", action="store_true", help="tiny models (CPU pipeline check)")
    p.add_argument("--models", default="ultramem,dense,moe")
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--heldout-bytes", type=int, default=0, help="0: all of heldout.txt")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--print-configs", action="store_true")
    args = p.parse_args(argv)

    configs = model_configs(args.tiny, args.seq)
    for name, cfg in configs.items():
        print(f"{name:9s} params {total_params(cfg):>11,d}  active MACs/token "
              f"{active_macs(cfg):>10,d}  bf16 MB {2 * total_params(cfg) / 1e6:6.1f}  "
              f"{json.dumps(cfg.get('memory') or cfg.get('moe') or {})} F={cfg['intermediate_size']}")
    if args.print_configs:
        return 0
    os.makedirs(args.out, exist_ok=True)
    train_data = T.read_bytes(os.path.join(args.corpus, "train.txt"))
    heldout = T.read_bytes(os.path.join(args.corpus, "heldout.txt"))
    if args.heldout_bytes:
        heldout = heldout[:args.heldout_bytes]
    print(f"train {len(train_data):,} bytes, held-out {len(heldout):,} bytes; "
          f"{args.steps * args.batch * args.seq / len(train_data):.2f} epochs", flush=True)
    if args.device.startswith("cuda"):
        print(torch.cuda.get_device_name(0), torch.__version__, flush=True)

    results = {"models": {}, "configs": configs, "corpus_bytes": {"train": len(train_data),
                                                                   "heldout": len(heldout)}}
    extra_files = {}
    rows_list = []
    for name in args.models.split(","):
        cfg = configs[name]
        model, summary = T.train(cfg, name, train_data, heldout, args.out, args.steps,
                                 args.batch, args.seq, args.lr, args.warmup, seed=args.seed,
                                 data_seed=args.data_seed, device=args.device,
                                 eval_every=args.eval_every, log_every=args.log_every)
        # Final held-out measurement: float32 (no autocast, no TF32), same code for all three.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        t0 = time.time()
        want_rows = rows_list if name == "ultramem" else None
        bpb, nll, predicted = T.evaluate(model, heldout, args.seq, args.device, rows_out=want_rows)
        summary.update({"heldout_bpb": bpb, "heldout_nll_nats": nll, "heldout_predicted": predicted,
                        "heldout_perplexity": math.exp(nll / predicted),
                        "active_macs_per_token": active_macs(cfg),
                        "total_params_formula": total_params(cfg),
                        "eval_seconds": round(time.time() - t0, 1)})
        results["models"][name] = summary
        print(f"[{name}] held-out {bpb:.4f} bits/byte (float32, {predicted} predicted bytes)",
              flush=True)
        if name == "ultramem":
            mdir = os.path.join(args.out, "ultramem-tiny")
            T.save_model(model, cfg, mdir, dtype="BF16")
            for small in ("config.json", "model.safetensors.index.json"):
                with open(os.path.join(mdir, small), "rb") as f:
                    extra_files["ultramem-tiny/" + small] = f.read()
                os.remove(os.path.join(mdir, small))
            rows, virt, rsum = row_access(rows_list, cfg)
            buf = io.BytesIO()
            np.savez_compressed(buf, row_counts=rows.astype(np.int32),
                                virtual_counts=virt.astype(np.int32))
            extra_files["row_access.npz"] = buf.getvalue()
            extra_files["row_access.json"] = json.dumps(
                {"text": "data/corpus/heldout.txt", "window": args.seq, "layers": rsum},
                indent=2).encode()
            results["row_access"] = rsum
            for s in rsum:
                print(f"[ultramem] layer {s['layer']}: top 1% rows {100 * s['top_1pct_share']:.1f}%"
                      f" of accesses, top 10% {100 * s['top_10pct_share']:.1f}%, never used "
                      f"{s['rows_never_accessed']}/{s['rows']}", flush=True)
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
        extra_files["results.json"] = json.dumps(results, indent=2).encode()
        with tarfile.open(os.path.join(args.out, "results.tar.gz"), "w:gz") as tar:
            for fname, data in extra_files.items():
                info = tarfile.TarInfo(fname)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))

    print("\n| model | total params | active MACs/token | tokens seen | train s | held-out bits/byte |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, s in results["models"].items():
        print(f"| {name} | {s['params']:,} | {s['active_macs_per_token']:,} | {s['tokens_seen']:,} "
              f"| {s['train_seconds']} | {s['heldout_bpb']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
