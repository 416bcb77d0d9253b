"""Model directories of MODEL.md §4: config.json plus safetensors files (written and read here with
numpy alone, no `safetensors` package), one file or several with model.safetensors.index.json."""

import json
import os
import struct

import numpy as np
import torch

from .config import ConfigError, expected_tensors, memory_dims, validate

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DENSE_NAME = "model-dense.safetensors"
FLOAT_DTYPES = ("F32", "BF16", "F16")
INDEX_DTYPES = ("I64", "I32")
_NP = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
       "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "F64": np.dtype("<f8"),
       "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?")}
_MAX_HEADER_BYTES = 100 << 20


class CheckpointError(ValueError):
    pass


def values_file_name(j):
    return f"model-memory-{j}-values.safetensors"


# ---------------------------------------------------------------------------------------------
# bf16 <-> f32 (round to nearest even, as torch and the engine do)

def f32_to_bf16_bits(a):
    a = np.ascontiguousarray(a, dtype=np.float32)
    bits = a.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(a), np.uint16(0x7FC0), rounded)


def bf16_bits_to_f32(bits):
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def round_to_dtype(a, dtype):
    """What storing float array `a` as `dtype` ('F32'|'BF16'|'F16') and reading it back gives."""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "BF16":
        return bf16_bits_to_f32(f32_to_bf16_bits(a))
    if dtype == "F16":
        return a.astype(np.float16).astype(np.float32)
    return a


# ---------------------------------------------------------------------------------------------
# safetensors files

def write_safetensors(path, arrays, metadata=None):
    """arrays: {name: (dtype string, numpy array already in that on-disk representation)}.

    Tensors are laid out by decreasing item size, then name, so each starts aligned to its size."""
    order = sorted(arrays, key=lambda k: (-_NP[arrays[k][0]].itemsize, k))
    header, blobs, offset = {}, [], 0
    for name in order:
        dtype, arr = arrays[name]
        data = np.ascontiguousarray(arr, dtype=_NP[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def read_safetensors(path):
    """Returns ({name: (dtype string, numpy array)}, metadata). Raises CheckpointError naming the
    file (and tensor) for a truncated file, a bad header, or a byte range outside the data."""
    fname = os.path.basename(path)
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise CheckpointError(f"{fname}: file too short for a safetensors header")
    (hlen,) = struct.unpack("<Q", raw[:8])
    if hlen > _MAX_HEADER_BYTES or 8 + hlen > len(raw):
        raise CheckpointError(f"{fname}: header length {hlen} points outside the file "
                              f"({len(raw)} bytes)")
    try:
        header = json.loads(raw[8:8 + hlen].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{fname}: bad JSON header: {e}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{fname}: header is not a JSON object")
    data = memoryview(raw)[8 + hlen:]
    metadata = header.pop("__metadata__", {}) or {}
    out = {}
    for name, entry in header.items():
        where = f"{fname}: tensor {name}"
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{where}: malformed header entry {entry!r}") from None
        if dtype not in _NP:
            raise CheckpointError(f"{where}: unknown dtype {dtype!r}")
        if (not isinstance(shape, list)
                or not all(isinstance(s, int) and s >= 0 for s in shape)):
            raise CheckpointError(f"{where}: bad shape {shape!r}")
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end):
            raise CheckpointError(f"{where}: bad data_offsets {[begin, end]!r}")
        if end > len(data):
            raise CheckpointError(f"{where}: data_offsets [{begin}, {end}] point outside the "
                                  f"file's {len(data)} data bytes")
        count = int(np.prod(shape, dtype=np.int64))
        if (end - begin) != count * _NP[dtype].itemsize:
            raise CheckpointError(f"{where}: {end - begin} bytes do not hold {dtype} {shape}")
        arr = np.frombuffer(data[begin:end], dtype=_NP[dtype]).reshape(shape)
        out[name] = (dtype, arr)
    return out, metadata


# ---------------------------------------------------------------------------------------------
# save

def _to_numpy(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def save(model_or_state, config, directory, dtype="F32", split=False, index_dtype="I64",
         overwrite=True):
    """Writes config.json and the tensors of `model_or_state` (an nn.Module or {name: tensor or
    array}) to `directory`. Floats are stored as `dtype` (F32, BF16 or F16; float64 inputs are
    rounded to float32 first); shuffle_index as `index_dtype` (I64 or I32). split=True puts each
    memory layer's values in model-memory-{j}-values.safetensors, everything else in
    model-dense.safetensors, and writes the index. Refuses a tensor set that does not match
    MODEL.md §4 for `config`. With overwrite, earlier safetensors files in `directory` go first."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
    if index_dtype not in INDEX_DTYPES:
        raise ValueError(f"index_dtype must be one of {INDEX_DTYPES}, got {index_dtype!r}")
    validate(config)
    state = (model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module)
             else model_or_state)
    expected = expected_tensors(config)
    names = {name for name, _, _ in expected}
    missing = sorted(names - set(state))
    extra = sorted(set(state) - names)
    if missing or extra:
        raise CheckpointError(f"save: tensors do not match the config: missing {missing}, "
                              f"extra {extra}")
    files = {}
    for name, shape, kind in expected:
        arr = _to_numpy(state[name])
        if list(arr.shape) != shape:
            raise CheckpointError(f"save: tensor {name} has shape {list(arr.shape)}, "
                                  f"config wants {shape}")
        if kind == "index":
            stored = (index_dtype, arr.astype(_NP[index_dtype]))
        elif dtype == "BF16":
            stored = ("BF16", f32_to_bf16_bits(arr.astype(np.float32)))
        else:
            stored = (dtype, arr.astype(np.float32).astype(_NP[dtype]))
        fname = SINGLE_NAME
        if split:
            fname = DENSE_NAME
            if name.startswith("memory.") and name.endswith(".values"):
                fname = values_file_name(int(name.split(".")[1]))
        files.setdefault(fname, {})[name] = stored
    os.makedirs(directory, exist_ok=True)
    if overwrite:
        for old in os.listdir(directory):
            if old.endswith(".safetensors") or old == INDEX_NAME:
                os.remove(os.path.join(directory, old))
    for fname, arrays in files.items():
        write_safetensors(os.path.join(directory, fname), arrays)
    if split:
        weight_map = {name: fname for fname, arrays in files.items() for name in arrays}
        with open(os.path.join(directory, INDEX_NAME), "w") as f:
            json.dump({"metadata": {"format": "pt"},
                       "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
            f.write("\n")
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# load

def read_config(directory):
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory}: no config.json")
    with open(path) as f:
        try:
            config = json.load(f)
        except ValueError as e:
            raise CheckpointError(f"config.json: bad JSON: {e}") from None
    try:
        validate(config, "config.json")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    return config


def load_tensors(directory):
    """Reads and validates a model directory. Returns (config, {name: (dtype, array, file)})."""
    config = read_config(directory)
    index_path = os.path.join(directory, INDEX_NAME)
    weight_map = None
    if os.path.isfile(index_path):
        with open(index_path) as f:
            try:
                weight_map = json.load(f)["weight_map"]
            except (ValueError, KeyError, TypeError):
                raise CheckpointError(f"{INDEX_NAME}: no weight_map object") from None
        fnames = sorted(set(weight_map.values()))
    else:
        fnames = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
        if len(fnames) != 1:
            raise CheckpointError(f"{directory}: {len(fnames)} safetensors files and no "
                                  f"{INDEX_NAME} (one file, or an index, is required)")
    tensors = {}
    for fname in fnames:
        path = os.path.join(directory, fname)
        if not os.path.isfile(path):
            raise CheckpointError(f"{INDEX_NAME}: names missing file {fname}")
        arrays, _ = read_safetensors(path)
        for name, (dt, arr) in arrays.items():
            if name in tensors:
                raise CheckpointError(f"{fname}: tensor {name} also in {tensors[name][2]}")
            if weight_map is not None and weight_map.get(name) != fname:
                raise CheckpointError(f"{fname}: tensor {name} is mapped to "
                                      f"{weight_map.get(name)!r} by {INDEX_NAME}")
            tensors[name] = (dt, arr, fname)
    if weight_map is not None:
        for name, fname in weight_map.items():
            if name not in tensors:
                raise CheckpointError(f"{INDEX_NAME}: tensor {name} is not in {fname}")
    _check_tensors(config, tensors, fnames)
    return config, tensors


def _check_tensors(config, tensors, fnames):
    expected = expected_tensors(config)
    names = {name for name, _, _ in expected}
    for name in sorted(set(tensors) - names):
        raise CheckpointError(f"{tensors[name][2]}: extra tensor {name} (not in MODEL.md §4 "
                              f"for this config)")
    md = memory_dims(config)
    for name, shape, kind in expected:
        if name not in tensors:
            raise CheckpointError(f"missing tensor {name}: in none of {', '.join(fnames)}")
        dt, arr, fname = tensors[name]
        where = f"{fname}: tensor {name}"
        if list(arr.shape) != shape:
            raise CheckpointError(f"{where}: shape {list(arr.shape)}, expected {shape}")
        allowed = INDEX_DTYPES if kind == "index" else FLOAT_DTYPES
        if dt not in allowed:
            raise CheckpointError(f"{where}: dtype {dt}, expected one of {allowed}")
        if kind == "index":
            seen = np.zeros(md.virtual, dtype=bool)
            idx = arr.astype(np.int64)
            ok = idx.size == md.virtual and idx.min() >= 0 and idx.max() < md.virtual
            if ok:
                seen[idx] = True
                ok = bool(seen.all())
            if not ok:
                raise CheckpointError(f"{where}: not a permutation of [0, {md.virtual})")


def to_float32(dtype, arr):
    if dtype == "BF16":
        return bf16_bits_to_f32(arr)
    return arr.astype(np.float32)


def load_state(directory):
    """(config, {name: torch tensor}) with floats widened to float32, shuffle_index to int64."""
    config, tensors = load_tensors(directory)
    state = {}
    for name, (dt, arr, _) in tensors.items():
        a = arr.astype(np.int64) if dt in INDEX_DTYPES else to_float32(dt, arr)
        state[name] = torch.from_numpy(np.array(a))
    return config, state


def load(directory, dtype=torch.float32, device=None):
    """Loads a model directory into an UltraMemModel computing in `dtype`; returns (config, model).

    The stored values are exact in float32, so any float dtype sees the same parameters."""
    from .model import UltraMemModel
    config, state = load_state(directory)
    model = UltraMemModel(config, dtype=dtype, device=device)
    model.load_state_dict(state, strict=True)
    model.eval()
    return config, model


def describe(directory):
    """{file: [tensor names]} of a model directory (for tools and tests)."""
    _, tensors = load_tensors(directory)
    out = {}
    for name, (_, _, fname) in tensors.items():
        out.setdefault(fname, []).append(name)
    return out


__all__ = ["save", "load", "load_state", "load_tensors", "read_safetensors", "write_safetensors",
           "CheckpointError", "f32_to_bf16_bits", "bf16_bits_to_f32", "round_to_dtype"]
