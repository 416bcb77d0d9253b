#!/usr/bin/python3
"""Cross-check of the C++ engine against the PyTorch reference (python/ultramem_ref), run by CI.

For every case of the random checkpoint generator: write a checkpoint, draw random tokens
(T = 10..16), score them with the reference (score.py, float64) and with
BUILD/bin/ultramem-score, once as one prefill and once with --decode, and require per position
max|eng - ref| / max|ref| <= 1e-5 and identical rows arrays ([J, T, H·m] int64 t values).

  /usr/bin/python3 tests/engine_vs_reference.py [--build DIR] [--cases a,b] [--seed S]

Needs torch (Debian's /usr/bin/python3 has it). The seed is drawn fresh each run and printed;
--seed repeats a run. Token draws whose top-m decisions come within --min-margin (relative) of a
tie are redrawn, so a float32 engine's rounding cannot legitimately flip a selection."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zlib

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_DIR = os.path.join(REPO, "python")
sys.path.insert(0, PYTHON_DIR)

try:
    import torch
    from ultramem_ref import checkpoint, random_checkpoint
    from ultramem_ref.score import score_tokens
except ImportError as e:  # the PATH python3 of the dev image has no torch
    sys.exit(f"engine_vs_reference: cannot import the reference ({e}); "
             "run it with /usr/bin/python3")

MAX_TOKEN_DRAWS = 200


def draw_tokens(case, seed, model, vocab_size, min_margin):
    """Random tokens (T in 10..16) whose memory decisions are all at least min_margin from a tie.
    Returns (tokens, smallest margin, draws)."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(case.encode())])
    best = None
    for draw in range(1, MAX_TOKEN_DRAWS + 1):
        T = int(rng.integers(10, 17))
        tokens = rng.integers(0, vocab_size, size=T).tolist()
        _, _, _, margins = score_tokens(model, tokens, want_margins=True)
        margin = float(margins.min()) if margins.size else float("inf")
        if best is None or margin > best[1]:
            best = (tokens, margin, draw)
        if margin >= min_margin:
            return tokens, margin, draw
    return best


def run(cmd, timeout_s):
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout_s} s"
    except OSError as e:
        return None, str(e)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return None, f"exit {res.returncode}: " + " | ".join(tail)
    return res, ""


def compare_logits(eng, ref, tol):
    """Returns (ok, worst relative error, worst position, message)."""
    if eng.shape != ref.shape:
        return False, float("nan"), -1, f"logits shape {eng.shape}, reference {ref.shape}"
    eng, ref = eng.astype(np.float64), ref.astype(np.float64)
    if not np.isfinite(eng).all():
        pos = int(np.argwhere(~np.isfinite(eng))[0][0])
        return False, float("inf"), pos, f"non-finite logits at position {pos}"
    err = np.abs(eng - ref).max(axis=1) / np.maximum(np.abs(ref).max(axis=1), 1e-30)
    pos = int(err.argmax())
    bad = np.flatnonzero(err > tol)
    if bad.size:
        return False, float(err[pos]), pos, f"{bad.size} positions over {tol:g}: {bad[:8].tolist()}"
    return True, float(err[pos]), pos, ""


def compare_rows(eng_path, ref):
    """Returns (ok, message). A dense model (J = 0) accepts a missing or empty engine file."""
    if not os.path.exists(eng_path):
        return (True, "") if ref.size == 0 else (False, "engine wrote no rows file")
    eng = np.load(eng_path)
    if ref.size == 0:
        return (True, "") if eng.size == 0 else (False, f"dense model but rows {eng.shape}")
    if eng.shape != ref.shape:
        return False, f"rows shape {eng.shape}, reference {ref.shape}"
    if eng.dtype != np.int64:
        return False, f"rows dtype {eng.dtype}, want int64"
    diff = eng != ref
    if diff.any():
        j, t, k = (int(v) for v in np.argwhere(diff)[0])
        positions = int(diff.any(axis=(0, 2)).sum())
        return False, (f"{int(diff.sum())} t values differ at {positions} positions; first "
                       f"j={j} t={t} k={k}: engine {int(eng[j, t, k])}, reference "
                       f"{int(ref[j, t, k])}")
    return True, ""


def check_case(case, seed, binary, args):
    """Returns a list of result dicts, one per engine mode (or one for a setup failure)."""
    tmp = tempfile.mkdtemp(prefix=f"engine_vs_ref_{case}_")
    results = []
    try:
        model_dir = os.path.join(tmp, "model")
        config = random_checkpoint.generate(case, seed, model_dir)
        _, model = checkpoint.load(model_dir, dtype=torch.float64)
        tokens, margin, draws = draw_tokens(case, seed, model, config["vocab_size"],
                                            args.min_margin)
        token_arg = ",".join(map(str, tokens))
        base = dict(case=case, T=len(tokens), margin=margin, draws=draws)
        ref_l, ref_r = os.path.join(tmp, "ref_logits.npy"), os.path.join(tmp, "ref_rows.npy")
        _, err = run([args.python, "-m", "ultramem_ref.score", "--model", model_dir,
                      "--tokens", token_arg, "--logits-out", ref_l, "--rows-out", ref_r,
                      "--dtype", "float64", "--threads", "1"], args.timeout_s)
        if err:
            return [dict(base, mode="reference", ok=False, err=float("nan"), pos=-1,
                         rows="-", detail=f"score.py failed: {err}")]
        ref_logits, ref_rows = np.load(ref_l), np.load(ref_r)
        for mode in ("prefill", "decode"):
            eng_l = os.path.join(tmp, f"eng_{mode}_logits.npy")
            eng_r = os.path.join(tmp, f"eng_{mode}_rows.npy")
            cmd = [binary, "--model", model_dir, "--tokens", token_arg, "--logits-out", eng_l,
                   "--rows-out", eng_r] + (["--decode"] if mode == "decode" else [])
            _, err = run(cmd, args.timeout_s)
            if err or not os.path.exists(eng_l):
                results.append(dict(base, mode=mode, ok=False, err=float("nan"), pos=-1,
                                    rows="-", detail=f"engine failed: {err or 'no logits file'}"))
                continue
            l_ok, l_err, pos, l_msg = compare_logits(np.load(eng_l), ref_logits, args.tol)
            r_ok, r_msg = compare_rows(eng_r, ref_rows)
            results.append(dict(base, mode=mode, ok=l_ok and r_ok, err=l_err, pos=pos,
                                rows="same" if r_ok else "DIFFER",
                                detail="; ".join(m for m in (l_msg, r_msg) if m)))
        failed = [r for r in results if not r["ok"]]
        if failed:
            failed[0]["detail"] += f" [tokens {token_arg}]"
    except Exception as e:  # a broken case must not hide the others
        results.append(dict(case=case, mode="setup", T=0, margin=float("nan"), draws=0,
                            ok=False, err=float("nan"), pos=-1, rows="-",
                            detail=f"{type(e).__name__}: {e}"))
    finally:
        if args.keep:
            print(f"  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def print_table(results, tol):
    width = max([len(r["case"]) for r in results] + [4])
    print(f"\n{'case':<{width}}  {'mode':<9} {'T':>2}  {'max rel err':>11}  {'at':>3}  "
          f"{'rows':<6}  {'margin':>8}  {'draws':>5}  status")
    for r in results:
        err = f"{r['err']:.2e}" if np.isfinite(r["err"]) else str(r["err"])
        status = "ok" if r["ok"] else "FAIL"
        print(f"{r['case']:<{width}}  {r['mode']:<9} {r['T']:>2}  {err:>11}  {r['pos']:>3}  "
              f"{r['rows']:<6}  {r['margin']:>8.1e}  {r['draws']:>5}  {status}")
    failures = [r for r in results if not r["ok"]]
    if failures:
        print(f"\nFAILURES ({len(failures)}), tolerance {tol:g}:")
        for r in failures:
            print(f"  {r['case']} / {r['mode']}: {r['detail']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default=os.path.join(REPO, "build"), help="CMake build directory")
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    p.add_argument("--seed", type=int, help="seed for checkpoints and tokens (default: fresh)")
    p.add_argument("--tol", type=float, default=1e-5, help="per-position relative logit error")
    p.add_argument("--min-margin", type=float, default=2e-5,
                   help="redraw tokens whose top-m decisions are closer than this to a tie")
    p.add_argument("--python", default="/usr/bin/python3", help="interpreter for score.py")
    p.add_argument("--timeout-s", type=int, default=300, help="per engine or reference run")
    p.add_argument("--keep", action="store_true", help="keep the temporary model directories")
    args = p.parse_args(argv)

    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little") >> 1
    print(f"engine_vs_reference: seed {seed} (repeat with --seed {seed})", flush=True)
    binary = os.path.join(args.build, "bin", "ultramem-score")
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        print(f"engine_vs_reference: FAIL: no engine binary at {binary} (build it, or pass "
              f"--build)", file=sys.stderr)
        return 2
    cases = args.cases.split(",") if args.cases else list(random_checkpoint.CASES)
    unknown = [c for c in cases if c not in random_checkpoint.CASES]
    if unknown:
        print(f"engine_vs_reference: unknown cases {unknown}; known: "
              f"{', '.join(random_checkpoint.CASES)}", file=sys.stderr)
        return 2
    os.environ["PYTHONPATH"] = PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", "")
    torch.set_num_threads(1)
    results = []
    for case in cases:
        print(f"  {case}: {random_checkpoint.describe_case(case)}", flush=True)
        results += check_case(case, seed, binary, args)
    print_table(results, args.tol)
    failed = sum(not r["ok"] for r in results)
    print(f"\n{len(results) - failed}/{len(results)} passed (seed {seed})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
