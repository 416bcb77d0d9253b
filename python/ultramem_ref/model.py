"""The UltraMem model of MODEL.md §2-3 in PyTorch: the reference the engine is checked against,
and a trainable module (every float parameter gets gradients; only the top-m indices are discrete).

Parameter and buffer names are the checkpoint tensor names of MODEL.md §4. Runs on torch 1.13 and
2.x, on CPU or GPU, in float32 or float64 (whatever dtype the module is cast to)."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import MemoryDims, validate


def top_m(scores, m):
    """Indices of the m largest entries along the last axis, descending; ties go to the lower index.

    A stable descending sort keeps equal entries in index order (topk gives no such promise)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :m]


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(num_positions, head_dim, theta, dtype, device):
    """cos, sin of shape [T, hd] for positions 0..T-1 (rotate-half layout: frequencies repeated)."""
    i = torch.arange(head_dim // 2, dtype=torch.float64, device=device)
    inv_freq = float(theta) ** (-2.0 * i / head_dim)
    pos = torch.arange(num_positions, dtype=torch.float64, device=device)
    angles = pos[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x, cos, sin):
    """x: [B, heads, T, hd]. Pairs element i with element i + hd/2."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        D, hd = config["hidden_size"], config["head_dim"]
        self.n_h, self.n_kv, self.hd = (config["num_attention_heads"],
                                        config["num_key_value_heads"], hd)
        self.q_proj = nn.Linear(D, self.n_h * hd, bias=False)
        self.k_proj = nn.Linear(D, self.n_kv * hd, bias=False)
        self.v_proj = nn.Linear(D, self.n_kv * hd, bias=False)
        self.o_proj = nn.Linear(self.n_h * hd, D, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        group = self.n_h // self.n_kv  # query head i reads kv head i // group
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.hd)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v  # [B, n_h, T, hd]
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.n_h * self.hd))


class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        D, Fi = config["hidden_size"], config["intermediate_size"]
        self.gate_proj = nn.Linear(D, Fi, bias=False)
        self.up_proj = nn.Linear(D, Fi, bias=False)
        self.down_proj = nn.Linear(Fi, D, bias=False)

    def forward(self, u):
        return self.down_proj(F.silu(self.gate_proj(u)) * self.up_proj(u))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        D, eps = config["hidden_size"], config["rms_norm_eps"]
        self.attn_norm = RMSNorm(D, eps)
        self.attn = Attention(config)
        self.ffn_norm = RMSNorm(D, eps)
        self.ffn = FeedForward(config)

    def forward(self, x, cos, sin):
        """Returns (block output, u) where u = RMSNorm(a; ffn_norm) feeds memory layers."""
        a = x + self.attn(self.attn_norm(x), cos, sin)
        u = self.ffn_norm(a)
        return a + self.ffn(u), u


class MemoryLayer(nn.Module):
    """One UltraMem v1 memory layer (TDQKR + MCS + IVE), MODEL.md §3 steps 1-11."""

    def __init__(self, config):
        super().__init__()
        d = self.dims = MemoryDims(config["memory"])
        D = config["hidden_size"]
        self.query_proj = nn.Linear(D, 2 * d.Dk, bias=False)
        self.query_norm = RMSNorm(d.Dk, d.eps)
        self.keys_norm = RMSNorm(d.Dk, d.eps)
        self.keys = nn.Parameter(torch.empty(d.H, 2, d.n, d.Dk, d.r))
        self.tucker_core = nn.ParameterList(
            [nn.Parameter(torch.empty(d.H, d.r, d.r)) for _ in range(d.h)])
        # Rank-1 proxies of Σ_c tucker_core_c: set by refresh_tucker_uv(), never by gradients.
        self.register_buffer("tucker_core_u", torch.zeros(d.H, d.r))
        self.register_buffer("tucker_core_v", torch.zeros(d.H, d.r))
        self.values_proj = nn.Linear(d.E * d.Dv, D, bias=False)
        self.register_buffer("shuffle_index", torch.arange(d.virtual, dtype=torch.int64))
        self.values = nn.Parameter(torch.empty(d.N, d.Dv))

    def reset_parameters(self):
        """The authors' initialisation (olmo/ultramem_layer.py), with a fresh shuffle."""
        d = self.dims
        with torch.no_grad():
            self.query_norm.weight.fill_(d.Dk ** -0.33)
            self.keys_norm.weight.fill_(d.Dk ** -0.33)
            self.query_proj.weight.normal_(0.0, 1.0 / math.sqrt(d.Dk))
            self.values_proj.weight.normal_(0.0, 1.0 / math.sqrt(d.E * d.Dv))
            self.keys.normal_(0.0, 1.0 / math.sqrt(d.Dk))
            self.values.normal_(0.0, 0.02)
            for core in self.tucker_core:
                core.uniform_(0.0, 1.0)
            self.shuffle_index.copy_(torch.randperm(d.virtual, device=self.shuffle_index.device))
            self.tucker_core_u.zero_()
            self.tucker_core_v.zero_()
        self.refresh_tucker_uv()

    @torch.no_grad()
    def refresh_tucker_uv(self):
        """Sets tucker_core_u/v to the leading left/right singular vectors of Σ_c tucker_core_c,
        choosing the sign (u, v) or (-u, -v) nearest the current one (as the authors' trainer)."""
        total = torch.stack([c.detach() for c in self.tucker_core]).sum(0).double().cpu()
        U, _, Vh = torch.linalg.svd(total)
        u, v = U[..., :, 0], Vh[..., 0, :]  # [H, r]
        old_u = self.tucker_core_u.double().cpu()
        old_v = self.tucker_core_v.double().cpu()
        pos = (u - old_u).abs().sum(-1) + (v - old_v).abs().sum(-1)
        neg = (-u - old_u).abs().sum(-1) + (-v - old_v).abs().sum(-1)
        sign = 1.0 - 2.0 * (neg < pos).to(torch.float64)[:, None]  # ties keep the sign
        self.tucker_core_u.copy_(u * sign)
        self.tucker_core_v.copy_(v * sign)

    def normalized_keys(self):
        """K̂: keys [H,2,n,Dk,r] RMS-normalised over the Dk axis with keys_norm."""
        return self.keys_norm(self.keys.transpose(-1, -2)).transpose(-1, -2)

    def forward(self, x, trace=None):
        """x: [..., D] (u of the input block). Returns (o [..., D], t [..., H·m] int64).

        t is shuffle_index[virtual] in selection order k = head·m + rank. When `trace` is a list,
        a dict of the intermediate scores (P_row, P_col, G) is appended to it."""
        d = self.dims
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        M, H, n, m, r, h = x.shape[0], d.H, d.n, d.m, d.r, d.h
        q = self.query_proj(x)                                           # 1
        q_row = self.query_norm(q[:, :d.Dk])                             # 2
        q_col = self.query_norm(q[:, d.Dk:])
        k_hat = self.normalized_keys()                                   # 3 [H,2,n,Dk,r]
        k_row = k_hat[:, 0].permute(0, 1, 3, 2).reshape(H * n * r, d.Dk)
        k_col = k_hat[:, 1].permute(0, 1, 3, 2).reshape(H * n * r, d.Dk)
        s_row = (q_row @ k_row.t()).view(M, H, n, r)                     # 4
        s_col = (q_col @ k_col.t()).view(M, H, n, r)
        p_row = (s_row * self.tucker_core_u[None, :, None, :]).sum(-1)  # 5 [M,H,n]
        p_col = (s_col * self.tucker_core_v[None, :, None, :]).sum(-1)
        i_row = top_m(p_row.detach(), m)                                 # 6 [M,H,m]
        i_col = top_m(p_col.detach(), m)
        sr = s_row.gather(2, i_row[..., None].expand(M, H, m, r))       # 7 [M,H,m,r]
        sc = s_col.gather(2, i_col[..., None].expand(M, H, m, r))
        g_c = torch.stack([sr @ core[None] @ sc.transpose(-1, -2) for core in self.tucker_core],
                          dim=-1).reshape(M, H, m * m, h)                # [M,H,m·m,h]
        g = g_c.sum(-1)
        sel = top_m(g.detach(), m)                                       # 8 [M,H,m]
        virtual = i_row.gather(2, sel // m) * n + i_col.gather(2, sel % m)
        score = g_c.gather(2, sel[..., None].expand(M, H, m, h))        # [M,H,m,h]
        t = self.shuffle_index[virtual].reshape(M, H * m)                # 9
        row, group = t % d.N, t // d.N
        K = H * m
        picked = F.embedding(row, self.values)                           # 10 [M,K,Dv]
        weighted = (picked.view(M, K, h, d.chunk) * score.reshape(M, K, h, 1)).view(M, K, d.Dv)
        onehot = F.one_hot(group, d.E).to(weighted.dtype)                # [M,K,E]
        y = onehot.transpose(1, 2) @ weighted                            # [M,E,Dv]
        o = self.values_proj(y.reshape(M, d.E * d.Dv))                   # 11
        if trace is not None:
            trace.append({"p_row": p_row.detach(), "p_col": p_col.detach(), "g": g.detach()})
        return o.reshape(*lead, -1), t.reshape(*lead, K)


class UltraMemModel(nn.Module):
    """forward(tokens [B,T]) -> logits [B,T,V]; with return_rows=True also t [J,B,T,H·m]."""

    def __init__(self, config, dtype=torch.float32, device=None):
        super().__init__()
        validate(config)
        self.config = config
        D, V = config["hidden_size"], config["vocab_size"]
        self.embed_tokens = nn.Embedding(V, D)
        self.layers = nn.ModuleList([Block(config) for _ in range(config["num_layers"])])
        self.final_norm = RMSNorm(D, config["rms_norm_eps"])
        self.lm_head = None if config["tie_word_embeddings"] else nn.Linear(D, V, bias=False)
        mem = config.get("memory")
        self.spans = [tuple(s) for s in mem["layers"]] if mem else []
        self.memory = nn.ModuleList([MemoryLayer(config) for _ in self.spans])
        self.to(device=device, dtype=dtype)

    def reset_parameters(self, std=0.02):
        """A training start: normal(0, std) dense weights, unit norms, authors' memory init."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("memory."):
                    continue
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, std)
        for layer in self.memory:
            layer.reset_parameters()

    def refresh_tucker_uv(self):
        for layer in self.memory:
            layer.refresh_tucker_uv()

    @property
    def dtype(self):
        return self.embed_tokens.weight.dtype

    def forward(self, tokens, return_rows=False, trace=None):
        B, T = tokens.shape
        x = self.embed_tokens(tokens)
        cos, sin = rope_tables(T, self.config["head_dim"], self.config["rope_theta"],
                               x.dtype, x.device)
        u = {}
        rows = [None] * len(self.memory)
        for b, block in enumerate(self.layers):
            x, u[b] = block(x, cos, sin)
            for j, (src, dst) in enumerate(self.spans):  # in order of j
                if dst == b:
                    o, rows[j] = self.memory[j](u[src], trace)
                    if trace is not None:
                        trace[-1]["layer"] = j
                    x = x + o
        x = self.final_norm(x)
        logits = x @ self.embed_tokens.weight.t() if self.lm_head is None else self.lm_head(x)
        if not return_rows:
            return logits
        if rows:
            return logits, torch.stack(rows)
        return logits, torch.zeros(0, B, T, 0, dtype=torch.int64, device=tokens.device)
