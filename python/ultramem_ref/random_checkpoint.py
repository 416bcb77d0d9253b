"""Random tiny UltraMem checkpoints in named cases, for the engine-vs-reference cross-check.

  /usr/bin/python3 -m ultramem_ref.random_checkpoint --list-cases
  /usr/bin/python3 -m ultramem_ref.random_checkpoint --case NAME --seed S --out DIR

Weights come from numpy's PCG64 seeded with (seed, case), so a (case, seed) pair gives the same
checkpoint on every machine and torch version."""

import argparse
import json
import math
import sys
import zlib

import numpy as np

from . import checkpoint
from .config import expected_tensors, make_config, memory_dims

BASE = dict(vocab_size=300, hidden_size=64, num_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, intermediate_size=128, rms_norm_eps=1e-5,
            rope_theta=10000.0, max_position_embeddings=256, tie_word_embeddings=False)


def _mem(layers, E, r, h, H, knum=8, Dk=16, Dv=24, m=4):
    return {"layers": layers, "knum": knum, "value_expand": E, "key_dim": Dk, "value_dim": Dv,
            "heads": H, "topk": m, "tucker_rank": r, "tucker_cores": h, "norm_eps": 1e-5}


# name -> (config overrides, memory or None, float dtype, split files, shuffle_index dtype)
CASES = {
    "dense": (dict(), None, "F32", False, "I64"),
    "dense_tied_bf16_split": (dict(num_attention_heads=4, num_key_value_heads=4,
                                   tie_word_embeddings=True, num_layers=3),
                              None, "BF16", True, "I64"),
    "mha_e1": (dict(num_key_value_heads=4),
               _mem([[1, 2]], E=1, r=2, h=1, H=1, m=6), "F32", False, "I64"),
    "gqa_tied_e4_split": (dict(tie_word_embeddings=True),
                          _mem([[0, 1], [2, 3]], E=4, r=2, h=2, H=2, Dv=48), "F32", True, "I64"),
    "e9_r3_h3_same_block_bf16": (dict(num_key_value_heads=1, num_layers=3),
                                 _mem([[1, 1]], E=9, r=3, h=3, H=1, m=5), "BF16", False, "I64"),
    "shared_output_block_bf16_split": (dict(),
                                       _mem([[0, 2], [1, 2]], E=4, r=3, h=1, H=2, knum=12, m=8),
                                       "BF16", True, "I64"),
    "three_layers_bf16_i32": (dict(num_key_value_heads=4, tie_word_embeddings=True),
                              _mem([[0, 0], [0, 3], [2, 3]], E=1, r=3, h=2, H=2, knum=10),
                              "BF16", True, "I32"),
    "f16_i32": (dict(), _mem([[2, 3]], E=4, r=2, h=3, H=1, Dv=48, m=7), "F16", False, "I32"),
    "wide_e9_h2": (dict(num_layers=3),
                   _mem([[0, 2]], E=9, r=2, h=2, H=2, knum=16, Dv=48, m=8), "F32", True, "I64"),
}


def case_config(name):
    overrides, mem, _, _, _ = CASES[name]
    args = dict(BASE)
    args.update(overrides)
    return make_config(memory=mem, **args)


def describe_case(name):
    """One line naming what a case covers."""
    config = case_config(name)
    _, mem, dtype, split, index_dtype = CASES[name]
    nh, nkv = config["num_attention_heads"], config["num_key_value_heads"]
    parts = ["mha" if nh == nkv else ("mqa(gqa)" if nkv == 1 else "gqa"),
             "tied" if config["tie_word_embeddings"] else "untied", f"L={config['num_layers']}"]
    if mem is None:
        parts.append("no memory (dense)")
    else:
        md = memory_dims(config)
        spans = mem["layers"]
        parts += [f"E={md.E}", f"r={md.r}", f"h={md.h}", f"H={md.H}", f"m={md.m}",
                  f"knum={md.knum}", f"Dv={md.Dv}", f"spans={spans}"]
        if any(a == b for a, b in spans):
            parts.append("input==output span")
        outs = [b for _, b in spans]
        if len(set(outs)) < len(outs):
            parts.append("two layers end on one block")
    parts += [dtype, "split files" if split else "one file"]
    if mem is not None:
        parts.append(f"shuffle_index {index_dtype}")
    return ", ".join(parts)


def _rng(name, seed):
    return np.random.Generator(np.random.PCG64([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())]))


def random_state(config, rng):
    """{name: float64/int64 numpy array} with spread-out logits and tie-free memory scores."""
    D = config["hidden_size"]
    state = {}

    def normal(shape, std):
        return rng.standard_normal(shape) * std

    for name, shape, kind in expected_tensors(config):
        if kind == "index":
            state[name] = rng.permutation(shape[0]).astype(np.int64)
        elif name == "embed_tokens.weight":
            state[name] = normal(shape, 2.0 / math.sqrt(D))
        elif name == "lm_head.weight":
            state[name] = normal(shape, 2.0 / math.sqrt(D))
        elif name.endswith("query_norm.weight") or name.endswith("keys_norm.weight"):
            state[name] = shape[0] ** -0.33 * (1.0 + normal(shape, 0.1))
        elif name.endswith("norm.weight"):
            state[name] = 1.0 + normal(shape, 0.1)
        elif name.endswith(".keys"):
            state[name] = normal(shape, 1.0)
        elif ".tucker_core." in name:
            state[name] = normal(shape, 1.0)  # signed, so signed scores are exercised
        elif name.endswith(".values"):
            state[name] = normal(shape, 0.5)
        elif name.endswith("tucker_core_u") or name.endswith("tucker_core_v"):
            continue  # derived below
        else:  # Linear weights [out, in]
            state[name] = normal(shape, 1.0 / math.sqrt(shape[1]))
    md = memory_dims(config)
    for j in range(len(config["memory"]["layers"]) if md else 0):
        cores = [state[f"memory.{j}.tucker_core.{c}"] for c in range(md.h)]
        u, v = leading_singular_vectors(sum(cores))
        state[f"memory.{j}.tucker_core_u"] = u
        state[f"memory.{j}.tucker_core_v"] = v
    return state


def leading_singular_vectors(total):
    """total: [H, r, r]. Returns (u, v), each [H, r]: the leading left and right singular vectors
    (unscaled, as the authors' _calc_tucker_1rank), signed so u's largest-magnitude entry is > 0."""
    U, _, Vh = np.linalg.svd(total)
    u, v = U[:, :, 0].copy(), Vh[:, 0, :].copy()
    for head in range(u.shape[0]):
        if u[head, np.argmax(np.abs(u[head]))] < 0:
            u[head], v[head] = -u[head], -v[head]
    return u, v


def generate(name, seed, out_dir):
    """Writes case `name` with `seed` to `out_dir`; returns its config."""
    if name not in CASES:
        raise KeyError(f"unknown case {name!r}; known: {', '.join(CASES)}")
    config = case_config(name)
    _, _, dtype, split, index_dtype = CASES[name]
    state = random_state(config, _rng(name, seed))
    checkpoint.save(state, config, out_dir, dtype=dtype, split=split, index_dtype=index_dtype)
    return config


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list-cases", action="store_true", help="print the cases and what they cover")
    p.add_argument("--case", help="case name")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output model directory")
    p.add_argument("--json", action="store_true", help="with --list-cases: JSON output")
    args = p.parse_args(argv)
    if args.list_cases:
        if args.json:
            print(json.dumps({name: describe_case(name) for name in CASES}, indent=2))
        else:
            width = max(map(len, CASES))
            for name in CASES:
                print(f"{name:<{width}}  {describe_case(name)}")
        return 0
    if not args.case or not args.out:
        p.error("--case and --out are required (or --list-cases)")
    try:
        generate(args.case, args.seed, args.out)
    except KeyError as e:
        print(e.args[0], file=sys.stderr)
        return 2
    print(f"wrote {args.case} (seed {args.seed}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
