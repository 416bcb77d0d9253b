"""Decode step time of the PyTorch reference (python/ultramem_ref) with a KV cache, batch B.

Uses the reference module's own layers; only attention is re-run incrementally against a cache, as
any PyTorch serving loop would. Prints one JSON object like ultramem-bench-decode.

  /usr/bin/python3 bench/engine/torch_decode.py --model DIR [--batch 1] [--prompt 32] [--steps 32]
      [--threads 2] [--device cpu|cuda]
"""
import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))
from ultramem_ref import checkpoint  # noqa: E402
from ultramem_ref.model import apply_rope, rope_tables  # noqa: E402


@torch.no_grad()
def step(model, tokens, caches, pos, cos_all, sin_all):
    """tokens [B, t] at positions pos..pos+t-1; caches: per block [k, v] of [B, n_kv, P, hd]."""
    B, T = tokens.shape
    x = model.embed_tokens(tokens)
    cos, sin = cos_all[pos:pos + T], sin_all[pos:pos + T]
    u = {}
    for b, block in enumerate(model.layers):
        attn = block.attn
        h = block.attn_norm(x)
        q = attn.q_proj(h).view(B, T, attn.n_h, attn.hd).transpose(1, 2)
        k = attn.k_proj(h).view(B, T, attn.n_kv, attn.hd).transpose(1, 2)
        v = attn.v_proj(h).view(B, T, attn.n_kv, attn.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        kc, vc = caches[b]
        kc[:, :, pos:pos + T] = k
        vc[:, :, pos:pos + T] = v
        group = attn.n_h // attn.n_kv
        # Grouped-query attention without copying the cache: query heads of one kv head share it.
        keys, vals = kc[:, :, :pos + T], vc[:, :, :pos + T]
        qg = q.reshape(B, attn.n_kv, group * T, attn.hd)
        scores = (qg @ keys.transpose(-1, -2)).view(B, attn.n_h, T, pos + T) / math.sqrt(attn.hd)
        if T > 1:
            mask = torch.ones(T, pos + T, dtype=torch.bool).tril(pos)
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1).view(B, attn.n_kv, group * T, pos + T)
        out = (probs @ vals).view(B, attn.n_h, T, attn.hd)
        a = x + attn.o_proj(out.transpose(1, 2).reshape(B, T, attn.n_h * attn.hd))
        u[b] = block.ffn_norm(a)
        x = a + block.ffn(u[b])
        for j, (src, dst) in enumerate(model.spans):
            if dst == b:
                o, _ = model.memory[j](u[src])
                x = x + o
    x = model.final_norm(x[:, -1])
    return x @ model.embed_tokens.weight.t() if model.lm_head is None else model.lm_head(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config, model = checkpoint.load(args.model, dtype=torch.float32, device=args.device)
    model.eval()
    P = args.prompt + args.steps + 4
    cos_all, sin_all = rope_tables(P, config["head_dim"], config["rope_theta"], torch.float32,
                                   args.device)
    caches = [[torch.zeros(args.batch, config["num_key_value_heads"], P, config["head_dim"],
                           device=args.device) for _ in range(2)] for _ in model.layers]
    prompt = torch.tensor([[(7 * i + 13 * b) % 256 for i in range(args.prompt)]
                           for b in range(args.batch)], device=args.device)
    step(model, prompt, caches, 0, cos_all, sin_all)
    pos = args.prompt
    times = []
    for s in range(args.steps + 2):
        tok = torch.tensor([[(s * 31 + b * 17) % 256] for b in range(args.batch)], device=args.device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(model, tok, caches, pos, cos_all, sin_all)
        if args.device == "cuda":
            torch.cuda.synchronize()
        if s >= 2:
            times.append(time.perf_counter() - t0)
        pos += 1
    times.sort()
    med = times[len(times) // 2]
    print(json.dumps({"batch": args.batch, "threads": torch.get_num_threads(),
                      "step_ms": med * 1e3, "tokens_per_s": args.batch / med}))


if __name__ == "__main__":
    main()
