"""An independent, loop-by-loop implementation of MODEL.md §2-3 in numpy float64, written from the
document and not from ultramem_ref.model, for the unit tests. Slow by design: per token, per head,
plain python loops over candidates. Parameters come as {checkpoint name: numpy array}."""

import math

import numpy as np


def rms_norm(v, w, eps):
    return v / math.sqrt(float(np.mean(v * v)) + eps) * w


def silu(v):
    return v / (1.0 + np.exp(-v))


def memory_layer(p, j, config, x):
    """Steps 1-11 for one token x [D]. Returns (o [D], t list of H·m ints)."""
    mem = config["memory"]
    pre = f"memory.{j}."
    Dk, Dv, H, m = mem["key_dim"], mem["value_dim"], mem["heads"], mem["topk"]
    r, h, E, knum = mem["tucker_rank"], mem["tucker_cores"], mem["value_expand"], mem["knum"]
    eps = mem["norm_eps"]
    n = int(round(math.sqrt(E))) * knum
    N = knum * knum
    chunk = Dv // h
    keys = p[pre + "keys"]
    q = p[pre + "query_proj.weight"] @ x                                   # 1
    q_row = rms_norm(q[:Dk], p[pre + "query_norm.weight"], eps)            # 2
    q_col = rms_norm(q[Dk:], p[pre + "query_norm.weight"], eps)
    kn = p[pre + "keys_norm.weight"]
    Y = np.zeros((E, Dv))
    t_out = []
    for head in range(H):
        s_row = [[float(np.dot(q_row, rms_norm(keys[head, 0, i, :, a], kn, eps)))  # 3, 4
                  for a in range(r)] for i in range(n)]
        s_col = [[float(np.dot(q_col, rms_norm(keys[head, 1, i, :, a], kn, eps)))
                  for a in range(r)] for i in range(n)]
        u, v = p[pre + "tucker_core_u"][head], p[pre + "tucker_core_v"][head]
        p_row = [sum(s_row[i][a] * u[a] for a in range(r)) for i in range(n)]  # 5
        p_col = [sum(s_col[i][a] * v[a] for a in range(r)) for i in range(n)]
        i_row = sorted(range(n), key=lambda i: (-p_row[i], i))[:m]          # 6
        i_col = sorted(range(n), key=lambda i: (-p_col[i], i))[:m]
        g_c = [[0.0] * (m * m) for _ in range(h)]                           # 7
        for c in range(h):
            core = p[pre + f"tucker_core.{c}"][head]
            for xi in range(m):
                for yi in range(m):
                    total = 0.0
                    for a in range(r):
                        for b in range(r):
                            total += s_row[i_row[xi]][a] * core[a, b] * s_col[i_col[yi]][b]
                    g_c[c][xi * m + yi] = total
        g = [sum(g_c[c][z] for c in range(h)) for z in range(m * m)]
        best = sorted(range(m * m), key=lambda z: (-g[z], z))[:m]           # 8
        for z in best:
            virtual = i_row[z // m] * n + i_col[z % m]
            t = int(p[pre + "shuffle_index"][virtual])                     # 9
            row, group = t % N, t // N
            t_out.append(t)
            for c in range(h):                                              # 10
                Y[group, c * chunk:(c + 1) * chunk] += (
                    g_c[c][z] * p[pre + "values"][row, c * chunk:(c + 1) * chunk])
    o = p[pre + "values_proj.weight"] @ Y.reshape(-1)                       # 11
    return o, t_out


def rope(vec, pos, theta):
    hd = vec.shape[0]
    out = vec.copy()
    for i in range(hd // 2):
        angle = pos * theta ** (-2.0 * i / hd)
        a, b = vec[i], vec[i + hd // 2]
        out[i] = a * math.cos(angle) - b * math.sin(angle)
        out[i + hd // 2] = b * math.cos(angle) + a * math.sin(angle)
    return out


def forward(p, config, tokens):
    """Returns (logits [T, V], rows [J, T, H·m])."""
    T, eps = len(tokens), config["rms_norm_eps"]
    nh, nkv, hd = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    theta = config["rope_theta"]
    spans = config["memory"]["layers"] if config.get("memory") else []
    rows = [[None] * T for _ in spans]
    xs = [p["embed_tokens.weight"][tok].astype(np.float64) for tok in tokens]
    us = {}
    for b in range(config["num_layers"]):
        pre = f"layers.{b}."
        hs = [rms_norm(x, p[pre + "attn_norm.weight"], eps) for x in xs]
        qs = [(p[pre + "attn.q_proj.weight"] @ hv).reshape(nh, hd) for hv in hs]
        ks = [(p[pre + "attn.k_proj.weight"] @ hv).reshape(nkv, hd) for hv in hs]
        vs = [(p[pre + "attn.v_proj.weight"] @ hv).reshape(nkv, hd) for hv in hs]
        qs = [np.stack([rope(q[i], t, theta) for i in range(nh)]) for t, q in enumerate(qs)]
        ks = [np.stack([rope(k[i], t, theta) for i in range(nkv)]) for t, k in enumerate(ks)]
        new_xs, us[b] = [], []
        for t in range(T):
            heads = []
            for i in range(nh):
                kv = i // (nh // nkv)
                logit = [float(np.dot(qs[t][i], ks[s][kv])) / math.sqrt(hd) for s in range(t + 1)]
                top = max(logit)
                w = [math.exp(z - top) for z in logit]
                total = sum(w)
                heads.append(sum(w[s] / total * vs[s][kv] for s in range(t + 1)))
            a = xs[t] + p[pre + "attn.o_proj.weight"] @ np.concatenate(heads)
            u = rms_norm(a, p[pre + "ffn_norm.weight"], eps)
            us[b].append(u)
            ffn = p[pre + "ffn.down_proj.weight"] @ (
                silu(p[pre + "ffn.gate_proj.weight"] @ u) * (p[pre + "ffn.up_proj.weight"] @ u))
            new_xs.append(a + ffn)
        xs = new_xs
        for j, (src, dst) in enumerate(spans):
            if dst != b:
                continue
            for t in range(T):
                o, rows[j][t] = memory_layer(p, j, config, us[src][t])
                xs[t] = xs[t] + o
    head = p["embed_tokens.weight"] if config["tie_word_embeddings"] else p["lm_head.weight"]
    logits = np.stack([head @ rms_norm(x, p["final_norm.weight"], eps) for x in xs])
    if not spans:
        return logits, np.zeros((0, T, 0), dtype=np.int64)
    return logits, np.array(rows, dtype=np.int64)
