"""Scores one token sequence with the reference model: logits, selected rows and perplexity.

  /usr/bin/python3 -m ultramem_ref.score --model DIR --tokens 1,2,3 --logits-out L.npy \\
      [--rows-out R.npy] [--dtype float64|float32] [--threads N] [--text FILE]

Outputs: L.npy float32 [T, V] (computed in --dtype, default float64); R.npy int64 [J, T, H·m], the
t = shuffle_index[virtual] of memory layer j in selection order k = head·m + rank ([0, T, 0] for
a dense model). Prints the perplexity exp(mean NLL of tokens[1:] given their prefix)."""

import argparse
import math
import sys

import numpy as np
import torch

from . import checkpoint

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def decision_margins(scores, m):
    """Smallest gap between neighbours among the m+1 best of `scores` [..., L], relative to
    max|scores|: how far the top-m choice and its order are from a tie. inf if L == 1."""
    k = min(m + 1, scores.shape[-1])
    if k < 2:
        return torch.full(scores.shape[:-1], math.inf, dtype=torch.float64)
    top = torch.sort(scores.double(), dim=-1, descending=True).values[..., :k]
    gaps = (top[..., :-1] - top[..., 1:]).min(-1).values
    return gaps / scores.double().abs().amax(-1).clamp_min(1e-300)


def memory_margins(trace, num_layers, m, num_positions):
    """[J, T] smallest relative decision gap per memory layer and position (batch of one)."""
    out = np.full((num_layers, num_positions), np.inf)
    for entry in trace:
        per = [decision_margins(entry[key], m).amin(-1) for key in ("p_row", "p_col", "g")]
        out[entry["layer"]] = torch.stack(per).amin(0).cpu().numpy().reshape(num_positions)
    return out


def score_tokens(model, tokens, want_margins=False):
    """tokens: list of ints. Returns (logits [T,V] float32, rows [J,T,H·m] int64, nll [T-1]
    float64, margins [J,T] or None)."""
    device = model.embed_tokens.weight.device
    ids = torch.tensor([tokens], dtype=torch.int64, device=device)
    trace = [] if want_margins else None
    with torch.no_grad():
        logits, rows = model(ids, return_rows=True, trace=trace)
        logp = torch.log_softmax(logits[0].double(), dim=-1)
        nll = -logp[:-1].gather(1, ids[0, 1:, None]).squeeze(1)
    margins = None
    if want_margins:
        m = model.config["memory"]["topk"] if model.config.get("memory") else 1
        margins = memory_margins(trace, rows.shape[0], m, len(tokens))
    return (logits[0].float().cpu().numpy(), rows[:, 0].cpu().numpy().astype(np.int64),
            nll.cpu().numpy(), margins)


def parse_tokens(text, vocab_size):
    try:
        tokens = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise SystemExit(f"--tokens: not a comma-separated list of integers: {text!r}")
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        raise SystemExit(f"--tokens: ids {bad[:5]} outside [0, {vocab_size})")
    return tokens


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model directory (MODEL.md §4)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tokens", help="comma-separated token ids")
    src.add_argument("--text", help="file whose bytes are the tokens (ids 0..255)")
    p.add_argument("--logits-out", help="float32 [T, V] .npy")
    p.add_argument("--rows-out", help="int64 [J, T, H*m] .npy")
    p.add_argument("--margins-out",
                   help="float64 [J, T] .npy: smallest relative top-m decision gap per position")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float64")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        config, model = checkpoint.load(args.model, dtype=DTYPES[args.dtype], device=args.device)
    except checkpoint.CheckpointError as e:
        print(f"error: {args.model}: {e}", file=sys.stderr)
        return 1
    if args.text is not None:
        with open(args.text, "rb") as f:
            tokens = list(f.read())
    else:
        tokens = parse_tokens(args.tokens, config["vocab_size"])
    if not tokens:
        print("error: no tokens", file=sys.stderr)
        return 1
    logits, rows, nll, margins = score_tokens(model, tokens, args.margins_out is not None)
    if args.logits_out:
        np.save(args.logits_out, logits)
    if args.rows_out:
        np.save(args.rows_out, rows)
    if args.margins_out:
        np.save(args.margins_out, margins)
    print(f"tokens: {len(tokens)}")
    if len(tokens) > 1:
        print(f"mean_nll: {nll.mean():.6f}")
        print(f"perplexity: {math.exp(nll.mean()):.6f}")
    else:
        print("perplexity: n/a (one token)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
