#!/usr/bin/python3
"""The committed default model (models/ultramem-tiny) scored by the C++ engine and by the PyTorch
reference on the same held-out text gives the same perplexity (relative difference <= 1e-3).

  /usr/bin/python3 tests/trained_model_test.py [--build DIR] [--bytes 2048] [--window 512]

Takes the first --bytes bytes of data/corpus/heldout.txt, runs BUILD/bin/ultramem-score --text on
them with --window (non-overlapping windows, each a fresh sequence), and the reference
(python/ultramem_ref, float32 on the CPU, log-softmax in float64) on the same windows; compares mean NLL and perplexity.
Exit status 0 on a match, 1 otherwise (77 when the binary is missing: not built)."""

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "python"))


def reference_nll(model_dir, data, window, threads):
    import torch
    from ultramem_ref import checkpoint
    if threads:
        torch.set_num_threads(threads)
    _, model = checkpoint.load(model_dir, dtype=torch.float32)
    nll, predicted = 0.0, 0
    with torch.no_grad():
        for w0 in range(0, len(data), window):
            win = list(data[w0:w0 + window])
            if len(win) < 2:
                continue
            ids = torch.tensor([win], dtype=torch.int64)
            logp = torch.log_softmax(model(ids)[0].double(), dim=-1)
            nll += float(-logp[:-1].gather(1, ids[0, 1:, None]).sum())
            predicted += len(win) - 1
    return nll / predicted, predicted


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build", default=os.path.join(REPO, "build"), help="CMake build directory")
    p.add_argument("--model", default=os.path.join(REPO, "models", "ultramem-tiny"))
    p.add_argument("--text", default=os.path.join(REPO, "data", "corpus", "heldout.txt"))
    p.add_argument("--bytes", type=int, default=2048, help="prefix of --text to score")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--tol", type=float, default=1e-3, help="relative perplexity difference")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    binary = os.path.join(args.build, "bin", "ultramem-score")
    if not os.access(binary, os.X_OK):
        print(f"SKIP: {binary} not built")
        return 77
    with open(args.text, "rb") as f:
        data = f.read()[:args.bytes]
    with tempfile.TemporaryDirectory() as tmp:
        text = os.path.join(tmp, "prefix.txt")
        with open(text, "wb") as f:
            f.write(data)
        t0 = time.time()
        run = subprocess.run([binary, "--model", args.model, "--text", text,
                              "--window", str(args.window), "--threads", str(args.threads)],
                             capture_output=True, text=True, timeout=300)
        t_engine = time.time() - t0
    if run.returncode != 0:
        print(f"FAIL: ultramem-score exited {run.returncode}: {run.stderr.strip()[-2000:]}")
        return 1
    m = re.search(r"predicted (\d+) nll ([0-9.eE+-]+) perplexity ([0-9.eE+-]+)", run.stdout)
    if not m:
        print(f"FAIL: cannot parse ultramem-score output: {run.stdout!r}")
        return 1
    e_pred, e_nll, e_ppl = int(m.group(1)), float(m.group(2)), float(m.group(3))
    t0 = time.time()
    r_nll, r_pred = reference_nll(args.model, data, args.window, args.threads)
    t_ref = time.time() - t0
    r_ppl = math.exp(r_nll)
    rel = abs(e_ppl - r_ppl) / r_ppl
    print(f"{len(data)} bytes, window {args.window}: engine perplexity {e_ppl:.6f} "
          f"({e_nll / math.log(2):.5f} bits/byte, {e_pred} predicted, {t_engine:.1f}s), "
          f"reference {r_ppl:.6f} ({r_nll / math.log(2):.5f} bits/byte, {r_pred} predicted, "
          f"{t_ref:.1f}s), relative difference {rel:.2e} (tolerance {args.tol:g})")
    if e_pred != r_pred:
        print(f"FAIL: engine predicted {e_pred} bytes, reference {r_pred}")
        return 1
    if not rel <= args.tol:
        print("FAIL")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
