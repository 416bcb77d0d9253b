"""A mixture-of-experts baseline for issue 7: the dense transformer of MODEL.md §2 with every FFN
replaced by top-k routed SwiGLU experts (Switch/Mixtral style). Training-only: the C++ engine does
not serve it, and its checkpoints are plain torch state dicts.

  config = make_moe_config(base_dense_config, num_experts=8, expert_size=416, top_k=2)
  model = MoEModel(config)      # forward(tokens) -> logits; model.aux_loss() after a forward

Router: softmax over experts in float32, top-k, weights renormalised over the chosen k; the
load-balancing loss is the Switch one, num_experts * sum_e f_e * P_e (f_e: share of routed slots,
P_e: mean router probability), summed over blocks."""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .model import UltraMemModel


class MoEFeedForward(nn.Module):
    def __init__(self, hidden_size, expert_size, num_experts, top_k):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.router = nn.Linear(hidden_size, num_experts, bias=False)
        self.gate_proj = nn.Parameter(torch.empty(num_experts, expert_size, hidden_size))
        self.up_proj = nn.Parameter(torch.empty(num_experts, expert_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, expert_size))
        self.last_aux = None
        self.last_load = None

    def forward(self, u):
        shape = u.shape
        x = u.reshape(-1, shape[-1])
        probs = torch.softmax(self.router(x).float(), dim=-1)                 # [M, n]
        weight, expert = probs.topk(self.top_k, dim=-1)                      # [M, k]
        weight = weight / weight.sum(-1, keepdim=True)
        load = F.one_hot(expert, self.num_experts).float().sum((0, 1))       # slots per expert
        frac = load / load.sum()
        self.last_aux = self.num_experts * (frac * probs.mean(0)).sum()
        self.last_load = load.detach()
        out = torch.zeros_like(x)
        flat_expert = expert.reshape(-1)
        flat_weight = weight.reshape(-1)
        order = torch.argsort(flat_expert)
        counts = load.long().tolist()                                        # one host sync
        start = 0
        for e, count in enumerate(counts):
            if count == 0:
                continue
            slots = order[start:start + count]
            start += count
            rows = slots // self.top_k
            h = x[rows]
            h = F.silu(h @ self.gate_proj[e].t().to(h.dtype)) * (h @ self.up_proj[e].t().to(h.dtype))
            y = (h @ self.down_proj[e].t().to(h.dtype)) * flat_weight[slots, None].to(h.dtype)
            out.index_add_(0, rows, y.to(out.dtype))
        return out.reshape(shape)


def make_moe_config(dense_config, num_experts, expert_size, top_k):
    """A dense (memory-free) config plus an "moe" object; intermediate_size is the expert width."""
    config = copy.deepcopy(dense_config)
    config.pop("memory", None)
    config["intermediate_size"] = expert_size
    config["moe"] = {"num_experts": num_experts, "expert_size": expert_size, "top_k": top_k}
    return config


class MoEModel(UltraMemModel):
    """UltraMemModel without memory layers whose block FFNs are MoEFeedForward."""

    def __init__(self, config, dtype=torch.float32, device=None):
        base = {k: v for k, v in config.items() if k != "moe"}
        super().__init__(base, dtype=dtype, device=device)
        self.config = config
        moe = config["moe"]
        for block in self.layers:
            block.ffn = MoEFeedForward(config["hidden_size"], moe["expert_size"],
                                       moe["num_experts"], moe["top_k"])
        self.to(device=device, dtype=dtype)

    def aux_loss(self):
        return sum(block.ffn.last_aux for block in self.layers)

    def expert_load(self):
        return torch.stack([block.ffn.last_load for block in self.layers])
