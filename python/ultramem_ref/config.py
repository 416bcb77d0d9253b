"""The model's config.json (MODEL.md §1, §2, §4) as a plain dict: validation, derived sizes and
the tensor list a checkpoint must hold."""

import copy
import math

DEFAULT_SPECIAL_TOKENS = {"<|bos|>": 256, "<|eos|>": 257, "<|pad|>": 258}

_TOP_INT_KEYS = ("vocab_size", "hidden_size", "num_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "intermediate_size")
_MEMORY_INT_KEYS = ("knum", "value_expand", "key_dim", "value_dim", "heads", "topk",
                    "tucker_rank", "tucker_cores")


class ConfigError(ValueError):
    pass


def make_config(vocab_size, hidden_size, num_layers, num_attention_heads, num_key_value_heads,
                head_dim, intermediate_size, rms_norm_eps=1e-5, rope_theta=10000.0,
                max_position_embeddings=2048, tie_word_embeddings=False, memory=None,
                special_tokens=None):
    """Returns a config dict in config.json layout. `memory` is the "memory" object or None."""
    config = {
        "model_type": "ultramem",
        "vocab_size": vocab_size, "hidden_size": hidden_size, "num_layers": num_layers,
        "num_attention_heads": num_attention_heads, "num_key_value_heads": num_key_value_heads,
        "head_dim": head_dim, "intermediate_size": intermediate_size,
        "rms_norm_eps": rms_norm_eps, "rope_theta": rope_theta,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": tie_word_embeddings,
    }
    if memory is not None:
        mem = dict(memory)
        mem.setdefault("norm_eps", 1e-5)
        mem["layers"] = [list(map(int, span)) for span in mem["layers"]]
        config["memory"] = mem
    tokens = DEFAULT_SPECIAL_TOKENS if special_tokens is None else special_tokens
    config["tokenizer"] = {"type": "bytes", "special_tokens": dict(tokens)}
    validate(config)
    return config


def validate(config, where="config"):
    """Raises ConfigError naming `where` and the key for anything MODEL.md does not allow."""
    def fail(msg):
        raise ConfigError(f"{where}: {msg}")

    if config.get("model_type") != "ultramem":
        fail(f"model_type must be 'ultramem', got {config.get('model_type')!r}")
    for key in _TOP_INT_KEYS:
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            fail(f"{key} must be a positive integer, got {value!r}")
    if config["num_attention_heads"] % config["num_key_value_heads"]:
        fail("num_key_value_heads must divide num_attention_heads")
    if config["head_dim"] % 2:
        fail("head_dim must be even (RoPE rotate-half)")
    for key in ("rms_norm_eps", "rope_theta"):
        if not isinstance(config.get(key), (int, float)) or config[key] <= 0:
            fail(f"{key} must be a positive number")
    mem = config.get("memory")
    if mem is None:
        return
    for key in _MEMORY_INT_KEYS:
        value = mem.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            fail(f"memory.{key} must be a positive integer, got {value!r}")
    s = math.isqrt(mem["value_expand"])
    if s * s != mem["value_expand"]:
        fail("memory.value_expand must be a perfect square")
    if mem["value_dim"] % mem["tucker_cores"]:
        fail("memory.value_dim must be divisible by memory.tucker_cores")
    if mem["topk"] > s * mem["knum"]:
        fail("memory.topk must not exceed the key count n = sqrt(E)*knum")
    layers = mem.get("layers")
    if not isinstance(layers, list):
        fail("memory.layers must be a list of [input_block, output_block]")
    for j, span in enumerate(layers):
        if (not isinstance(span, (list, tuple)) or len(span) != 2
                or not 0 <= span[0] <= span[1] < config["num_layers"]):
            fail(f"memory.layers[{j}] = {span!r} must satisfy 0 <= input <= output < num_layers")


class MemoryDims:
    """Derived sizes of one memory layer (the names of MODEL.md §1)."""

    def __init__(self, mem):
        self.knum = mem["knum"]
        self.E = mem["value_expand"]
        self.s = math.isqrt(self.E)
        self.n = self.s * self.knum
        self.N = self.knum * self.knum
        self.virtual = self.E * self.N
        self.Dk = mem["key_dim"]
        self.Dv = mem["value_dim"]
        self.H = mem["heads"]
        self.m = mem["topk"]
        self.r = mem["tucker_rank"]
        self.h = mem["tucker_cores"]
        self.chunk = self.Dv // self.h
        self.eps = float(mem.get("norm_eps", 1e-5))


def memory_dims(config):
    return MemoryDims(config["memory"]) if config.get("memory") else None


def num_memory_layers(config):
    mem = config.get("memory")
    return len(mem["layers"]) if mem else 0


def expected_tensors(config):
    """[(name, shape, kind)] in a stable order; kind is 'float' or 'index' (shuffle_index)."""
    V, D, F = config["vocab_size"], config["hidden_size"], config["intermediate_size"]
    hd, nh, nkv = config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]
    out = [("embed_tokens.weight", [V, D], "float")]
    for b in range(config["num_layers"]):
        p = f"layers.{b}."
        out += [(p + "attn_norm.weight", [D], "float"),
                (p + "attn.q_proj.weight", [nh * hd, D], "float"),
                (p + "attn.k_proj.weight", [nkv * hd, D], "float"),
                (p + "attn.v_proj.weight", [nkv * hd, D], "float"),
                (p + "attn.o_proj.weight", [D, nh * hd], "float"),
                (p + "ffn_norm.weight", [D], "float"),
                (p + "ffn.gate_proj.weight", [F, D], "float"),
                (p + "ffn.up_proj.weight", [F, D], "float"),
                (p + "ffn.down_proj.weight", [D, F], "float")]
    out.append(("final_norm.weight", [D], "float"))
    if not config["tie_word_embeddings"]:
        out.append(("lm_head.weight", [V, D], "float"))
    md = memory_dims(config)
    for j in range(num_memory_layers(config)):
        p = f"memory.{j}."
        out += [(p + "query_proj.weight", [2 * md.Dk, D], "float"),
                (p + "query_norm.weight", [md.Dk], "float"),
                (p + "keys_norm.weight", [md.Dk], "float"),
                (p + "keys", [md.H, 2, md.n, md.Dk, md.r], "float")]
        out += [(p + f"tucker_core.{c}", [md.H, md.r, md.r], "float") for c in range(md.h)]
        out += [(p + "tucker_core_u", [md.H, md.r], "float"),
                (p + "tucker_core_v", [md.H, md.r], "float"),
                (p + "values_proj.weight", [D, md.E * md.Dv], "float"),
                (p + "shuffle_index", [md.virtual], "index"),
                (p + "values", [md.N, md.Dv], "float")]
    return out


def copy_config(config):
    return copy.deepcopy(config)
