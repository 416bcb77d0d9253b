"""Trains a model of the PyTorch reference (ultramem_ref) on the byte-level corpus of issue 7.

Library used by train_all.py (which trains the UltraMem, dense and MoE models of issue 7 in one
call); also a CLI for one model:

  cd python && /usr/bin/python3 train.py --config CONFIG.json --out DIR [--steps N ...]

Recipe: AdamW (beta 0.9/0.95, eps 1e-8, weight decay 0.1 on dense matrices and embeddings, none on
norms, keys, Tucker cores, values); linear warm-up then cosine decay to 10% of the peak; memory
value tables at VALUE_LR_MULT (10x) the peak learning rate, as in the UltraMem paper (keys stay at
the base rate: every token scores every key, so keys get dense gradients; values are touched
sparsely); gradient clipping at 1.0; bf16 autocast on CUDA (float32 master weights);
refresh_tucker_uv() every TUCKER_REFRESH steps and before every save, as the authors' trainer keeps
tucker_core_u/v in step with the cores; one seed for the weights and one for the data order, so
models trained with the same data seed see the same tokens in the same order.

Tokens: raw bytes (ids 0..255). 7/8 of the rows of a batch are windows at uniformly random byte
offsets of train.txt; 1/8 start at a random document start and begin with <|bos|> (256), so the
model knows <|bos|> as "a document starts here" (ultramem-generate puts it before the prompt).
Evaluation (bits per byte) runs over non-overlapping windows of max_position_embeddings bytes of
held-out text, each a fresh sequence, no <|bos|>: the same windows `ultramem-score --text` scores.
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ultramem_ref import checkpoint  # noqa: E402
from ultramem_ref import model as um  # noqa: E402
from ultramem_ref.moe import MoEModel  # noqa: E402

BOS, EOS, PAD = 256, 257, 258
VALUE_LR_MULT = 10.0
TUCKER_REFRESH = 10
BOS_ROW_SHARE = 8  # one row in 8 starts at a document start with <|bos|>


# ---------------------------------------------------------------------------------------------
# attention through scaled_dot_product_attention (same math as the reference; used for training)

def _sdpa_forward(self, x, cos, sin):
    B, T, _ = x.shape
    q = self.q_proj(x).view(B, T, self.n_h, self.hd).transpose(1, 2)
    k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
    v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
    q, k = um.apply_rope(q, cos.to(q.dtype), sin.to(q.dtype)), um.apply_rope(k, cos.to(k.dtype),
                                                                            sin.to(k.dtype))
    group = self.n_h // self.n_kv
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_h * self.hd))


def use_sdpa(enable=True):
    """Swaps the reference Attention.forward for an SDPA one (flash attention on CUDA)."""
    if not hasattr(um.Attention, "_reference_forward"):
        um.Attention._reference_forward = um.Attention.forward
    um.Attention.forward = _sdpa_forward if enable else um.Attention._reference_forward


def _autocast(enabled):
    """bf16 autocast on CUDA; a no-op context otherwise (torch 1.13 on CPU has no CUDA autocast)."""
    if enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------
# data

def read_bytes(path):
    with open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8)


def doc_starts(data):
    """Byte offsets where documents start (0 and after every blank line)."""
    nl = np.flatnonzero((data[:-2] == 10) & (data[1:-1] == 10)) + 2
    return np.concatenate([[0], nl]).astype(np.int64)


class Batches:
    """Deterministic batches [B, T+1] of token ids from the training bytes, on `device`."""

    def __init__(self, data, batch, seq, seed, device):
        self.data = torch.from_numpy(data.astype(np.int64)).to(device)
        self.starts = doc_starts(data)
        self.starts = self.starts[self.starts < len(data) - seq - 1]
        self.batch, self.seq, self.device = batch, seq, device
        self.rng = np.random.default_rng(seed)
        self.arange = torch.arange(seq + 1, device=device)

    def next(self):
        B, T = self.batch, self.seq
        n_bos = B // BOS_ROW_SHARE
        offs = self.rng.integers(0, len(self.data) - T - 1, size=B)
        offs[:n_bos] = self.rng.choice(self.starts, size=n_bos) - 1    # slot 0 becomes <|bos|>
        offs = np.maximum(offs, 0)
        idx = torch.from_numpy(offs).to(self.device)[:, None] + self.arange[None, :]
        tok = self.data[idx]
        if n_bos:
            tok[:n_bos, 0] = BOS
        return tok


# ---------------------------------------------------------------------------------------------
# model, optimiser, schedule

def build_model(config, device, seed):
    torch.manual_seed(seed)
    cls = MoEModel if "moe" in config else um.UltraMemModel
    model = cls(config, dtype=torch.float32, device=device)
    model.reset_parameters()
    # GPT-2 style: residual output projections scaled down by sqrt(2 L).
    with torch.no_grad():
        scale = 1.0 / math.sqrt(2 * config["num_layers"])
        for name, p in model.named_parameters():
            if name.endswith("o_proj.weight") or name.endswith("down_proj.weight") \
                    or name.endswith("ffn.down_proj"):
                p.mul_(scale)
    return model


def param_groups(model, lr, weight_decay):
    decay, no_decay, values = [], [], []
    for name, p in model.named_parameters():
        if name.startswith("memory.") and name.endswith(".values"):
            values.append(p)
        elif ("norm" in name or ".keys" in name or "tucker_core" in name or p.dim() < 2):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr_mult": 1.0, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0, "name": "no_decay"}]
    if values:
        groups.append({"params": values, "weight_decay": 0.0, "lr_mult": VALUE_LR_MULT,
                       "name": "values"})
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    return groups


def lr_at(step, total, warmup, peak, floor=0.1):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def count_params(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# evaluation: bits per byte over fresh windows (ultramem-score --text --window W)

def window_tokens(data, window):
    """List of int64 arrays: non-overlapping windows of `window` bytes (the last may be short)."""
    return [data[i:i + window].astype(np.int64) for i in range(0, len(data), window)]


@torch.no_grad()
def evaluate(model, data, window, device, batch=64, autocast=False, rows_out=None):
    """Returns (bits per predicted byte, nll sum in nats, predicted count). With rows_out a list,
    appends t [J, n, T, H*m] of every batch (memory models)."""
    model.eval()
    wins = window_tokens(data, window)
    nll_sum, predicted = 0.0, 0
    groups = {}
    for w in wins:
        groups.setdefault(len(w), []).append(w)
    for length, ws in sorted(groups.items()):
        if length < 2:
            continue
        for i in range(0, len(ws), batch):
            tok = torch.from_numpy(np.stack(ws[i:i + batch])).to(device)
            with _autocast(autocast):
                if rows_out is not None and model.config.get("memory"):
                    logits, rows = model(tok, return_rows=True)
                    rows_out.append(rows.cpu())
                else:
                    logits = model(tok)
            logp = torch.log_softmax(logits.double(), dim=-1)[:, :-1]
            nll_sum += float(-logp.gather(2, tok[:, 1:, None]).sum())
            predicted += tok.shape[0] * (length - 1)
    model.train()
    return nll_sum / predicted / math.log(2), nll_sum, predicted


# ---------------------------------------------------------------------------------------------
# training

def train(config, name, train_data, heldout_data, out_dir, steps, batch, seq, lr, warmup,
          weight_decay=0.1, seed=1234, data_seed=1, device="cuda", eval_every=100,
          log_every=10, moe_aux=0.01, save_dtype="BF16"):
    """Trains one model; returns (model, summary dict). Writes OUT/{name}_loss.jsonl."""
    os.makedirs(out_dir, exist_ok=True)
    cuda = device.startswith("cuda")
    if cuda:
        use_sdpa(True)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build_model(config, device, seed)
    n_params = count_params(model)
    groups = param_groups(model, lr, weight_decay)
    kwargs = {"fused": True} if cuda else {}
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, **kwargs)
    batches = Batches(train_data, batch, seq, data_seed, device)
    log_path = os.path.join(out_dir, f"{name}_loss.jsonl")
    log = open(log_path, "w")
    print(f"[{name}] {n_params:,} parameters, {steps} steps x {batch} x {seq} tokens, "
          f"peak lr {lr} (values x{VALUE_LR_MULT})", flush=True)
    is_moe = "moe" in config
    t0 = time.time()
    tokens_seen = 0
    for step in range(steps):
        cur = lr_at(step, steps, warmup, lr)
        for g in opt.param_groups:
            g["lr"] = cur * g["lr_mult"]
        tok = batches.next()
        with _autocast(cuda):
            logits = model(tok[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                   tok[:, 1:].reshape(-1))
            total = loss + moe_aux * model.aux_loss() if is_moe else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens_seen += batch * seq
        if model.memory and (step + 1) % TUCKER_REFRESH == 0:
            model.refresh_tucker_uv()
        last = step + 1 == steps
        if (step + 1) % log_every == 0 or last or step == 0:
            rec = {"step": step + 1, "tokens": tokens_seen, "loss": float(loss),
                   "train_bpb": float(loss) / math.log(2), "lr": cur, "grad_norm": float(gnorm),
                   "time_s": round(time.time() - t0, 2)}
            if is_moe:
                rec["aux"] = float(model.aux_loss())
            if (step + 1) % eval_every == 0 or last:
                if model.memory:
                    model.refresh_tucker_uv()
                rec["heldout_bpb"] = evaluate(model, heldout_data, seq, device,
                                              autocast=cuda)[0]
            log.write(json.dumps(rec) + "\n")
            log.flush()
            msg = (f"[{name}] step {step + 1}/{steps} loss {rec['loss']:.4f} "
                   f"({rec['train_bpb']:.3f} bpb) lr {cur:.2e} {rec['time_s']:.0f}s "
                   f"{tokens_seen / max(1e-9, time.time() - t0) / 1e6:.2f}M tok/s")
            if "heldout_bpb" in rec:
                msg += f" heldout {rec['heldout_bpb']:.4f} bpb"
            print(msg, flush=True)
    log.close()
    if model.memory:
        model.refresh_tucker_uv()
    train_time = time.time() - t0
    summary = {"name": name, "params": n_params, "steps": steps, "batch": batch, "seq": seq,
               "tokens_seen": tokens_seen, "train_seconds": round(train_time, 1),
               "peak_lr": lr, "value_lr_mult": VALUE_LR_MULT, "warmup": warmup,
               "weight_decay": weight_decay, "seed": seed, "data_seed": data_seed}
    return model, summary


def save_model(model, config, directory, dtype="BF16"):
    if "moe" in config:
        os.makedirs(directory, exist_ok=True)
        state = {k: v.detach().to(torch.bfloat16 if dtype == "BF16" else torch.float32).cpu()
                 for k, v in model.state_dict().items()}
        torch.save({"config": config, "state": state}, os.path.join(directory, "moe.pt"))
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
    else:
        checkpoint.save(model, config, directory, dtype=dtype, split=bool(config.get("memory")))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--name", default="model")
    p.add_argument("--out", required=True)
    p.add_argument("--corpus", default=os.path.join(os.path.dirname(__file__), "..", "data",
                                                    "corpus"))
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    with open(args.config) as f:
        config = json.load(f)
    tr = read_bytes(os.path.join(args.corpus, "train.txt"))
    he = read_bytes(os.path.join(args.corpus, "heldout.txt"))
    model, summary = train(config, args.name, tr, he, args.out, args.steps, args.batch, args.seq,
                           args.lr, args.warmup, seed=args.seed, data_seed=args.data_seed,
                           device=args.device)
    save_model(model, config, os.path.join(args.out, args.name))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
