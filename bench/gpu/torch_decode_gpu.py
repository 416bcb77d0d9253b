"""Decode step time of the PyTorch reference (python/ultramem_ref) on the GPU, bf16, eager and
replayed from a torch.cuda.CUDAGraph, batch B with a `context`-token KV cache (random contents:
the step's cost does not depend on them). The step is bench/engine/torch_decode.py's KV-cache
loop over the reference's own modules. Times with CUDA events, median of `iters` steps, each
re-running the same step (same position), as ultramem-cuda-bench does. Prints JSON lines.

  python3 bench/gpu/torch_decode_gpu.py --model DIR [--batches 1,16,64,256] [--context 512]
"""
import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
sys.path.insert(0, os.path.join(HERE, "..", "engine"))
from ultramem_ref import checkpoint  # noqa: E402
from ultramem_ref.model import rope_tables  # noqa: E402
from torch_decode import step  # noqa: E402


def time_ms(fn, iters):
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    for i in range(iters):
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    t = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return t[len(t) // 2]


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--batches", default="1,16,64,256")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    config, model = checkpoint.load(args.model, dtype=torch.bfloat16, device="cuda")
    model.eval()
    P = args.context + 8
    cos_all, sin_all = rope_tables(P, config["head_dim"], config["rope_theta"], torch.bfloat16, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(1)
    for B in [int(b) for b in args.batches.split(",")]:
        caches = [[torch.randn(B, config["num_key_value_heads"], P, config["head_dim"],
                               device="cuda", dtype=torch.bfloat16, generator=gen)
                   for _ in range(2)] for _ in model.layers]
        tok = torch.randint(0, config["vocab_size"], (B, 1), device="cuda", generator=gen)
        pos = args.context
        run = lambda: step(model, tok, caches, pos, cos_all, sin_all)  # noqa: E731
        for _ in range(3):
            run()
        eager = time_ms(run, args.iters)
        graph_ms, err = None, None
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    run()
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                run()
            for _ in range(3):
                g.replay()
            graph_ms = time_ms(g.replay, args.iters)
        except Exception as e:  # noqa: BLE001 - report why the graph path is missing
            err = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        print(json.dumps({"engine": "torch", "batch": B, "context": args.context,
                          "eager_us": eager * 1e3,
                          "graph_us": None if graph_ms is None else graph_ms * 1e3,
                          "graph_error": err}), flush=True)
        del caches


if __name__ == "__main__":
    main()
