"""Unit tests of the PyTorch reference (python/ultramem_ref).

  /usr/bin/python3 -m unittest discover -s python/tests

Set ULTRAMEM_TEST_DEVICE=cuda to also run the GPU comparison (it is skipped without a GPU)."""

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import slow_reference  # noqa: E402
from ultramem_ref import checkpoint, random_checkpoint  # noqa: E402
from ultramem_ref.checkpoint import CheckpointError  # noqa: E402
from ultramem_ref.config import memory_dims  # noqa: E402
from ultramem_ref.model import UltraMemModel, top_m  # noqa: E402
from ultramem_ref.score import score_tokens  # noqa: E402


def case_state(name, seed=0):
    config = random_checkpoint.case_config(name)
    state = random_checkpoint.random_state(config, random_checkpoint._rng(name, seed))
    return config, state


def model_from_state(config, state, dtype=torch.float64, device=None):
    model = UltraMemModel(config, dtype=dtype, device=device)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return model.eval()


def tokens_for(config, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config["vocab_size"], (1, T), generator=g)


class TempDirTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="ultramem_ref_test_")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)


class CheckpointTest(TempDirTest):
    def test_bf16_rounding_matches_torch(self):
        rng = np.random.default_rng(1)
        a = np.concatenate([rng.standard_normal(10000).astype(np.float32) * 100,
                            np.array([0.0, -0.0, 1.0, 1.00390625, 1.01171875, 3.4e38, -3.4e38,
                                      1e-40, np.inf, -np.inf], dtype=np.float32)])
        ours = checkpoint.f32_to_bf16_bits(a)
        theirs = torch.from_numpy(a).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        np.testing.assert_array_equal(ours, theirs)
        back = torch.from_numpy(a).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(checkpoint.bf16_bits_to_f32(ours), back)

    def test_round_trip_f32_exact(self):
        config, state = case_state("gqa_tied_e4_split")
        checkpoint.save(state, config, self.tmp, dtype="F32")
        config2, loaded = checkpoint.load_state(self.tmp)
        self.assertEqual(config, config2)
        self.assertEqual(set(loaded), set(state))
        for name, value in state.items():
            want = value if value.dtype == np.int64 else value.astype(np.float32)
            np.testing.assert_array_equal(loaded[name].numpy(), want, err_msg=name)
        _, tensors = checkpoint.load_tensors(self.tmp)
        self.assertEqual(tensors["memory.0.shuffle_index"][0], "I64")
        self.assertEqual(tensors["memory.0.values"][0], "F32")

    def test_round_trip_bf16_f16_i32(self):
        config, state = case_state("f16_i32")
        for dtype, rel in (("BF16", 2.0 ** -8), ("F16", 2.0 ** -11)):
            checkpoint.save(state, config, self.tmp, dtype=dtype, index_dtype="I32")
            _, tensors = checkpoint.load_tensors(self.tmp)
            self.assertEqual(tensors["memory.0.shuffle_index"][0], "I32")
            _, loaded = checkpoint.load_state(self.tmp)
            for name, value in state.items():
                got = loaded[name].numpy()
                if value.dtype == np.int64:
                    np.testing.assert_array_equal(got, value)
                    continue
                self.assertEqual(tensors[name][0], dtype)
                np.testing.assert_array_equal(got, checkpoint.round_to_dtype(value, dtype))
                np.testing.assert_allclose(got, value, rtol=rel, atol=1e-4)
            w = loaded["embed_tokens.weight"].numpy()
            self.assertGreater(np.abs(w - state["embed_tokens.weight"]).max(), 0)

    def test_split_equals_single(self):
        config, state = case_state("three_layers_bf16_i32")
        single, split = self.path("single"), self.path("split")
        checkpoint.save(state, config, single, dtype="BF16")
        checkpoint.save(state, config, split, dtype="BF16", split=True)
        self.assertEqual(sorted(f for f in os.listdir(single) if f.endswith(".safetensors")),
                         ["model.safetensors"])
        with open(os.path.join(split, checkpoint.INDEX_NAME)) as f:
            weight_map = json.load(f)["weight_map"]
        self.assertEqual(set(weight_map), set(state))
        for j in range(3):
            self.assertEqual(weight_map[f"memory.{j}.values"], checkpoint.values_file_name(j))
            self.assertEqual(checkpoint.describe(split)[checkpoint.values_file_name(j)],
                             [f"memory.{j}.values"])
        self.assertEqual(weight_map["memory.1.keys"], checkpoint.DENSE_NAME)
        tokens = tokens_for(config, 12)
        _, a = checkpoint.load(single, dtype=torch.float64)
        _, b = checkpoint.load(split, dtype=torch.float64)
        with torch.no_grad():
            la, ra = a(tokens, return_rows=True)
            lb, rb = b(tokens, return_rows=True)
        self.assertTrue(torch.equal(la, lb))
        self.assertTrue(torch.equal(ra, rb))

    def test_safetensors_layout(self):
        config, state = case_state("mha_e1")
        checkpoint.save(state, config, self.tmp, dtype="BF16")
        with open(self.path("model.safetensors"), "rb") as f:
            raw = f.read()
        (hlen,) = struct.unpack("<Q", raw[:8])
        self.assertEqual(hlen % 8, 0)
        header = json.loads(raw[8:8 + hlen])
        self.assertEqual(header.pop("__metadata__"), {"format": "pt"})
        spans = sorted(tuple(e["data_offsets"]) for e in header.values())
        self.assertEqual(spans[0][0], 0)
        for (_, end), (begin, _) in zip(spans, spans[1:]):
            self.assertEqual(end, begin)  # contiguous, no holes
        self.assertEqual(spans[-1][1], len(raw) - 8 - hlen)
        size = {"I64": 8, "I32": 4, "F32": 4, "BF16": 2, "F16": 2}
        for name, e in header.items():
            self.assertEqual(e["data_offsets"][0] % size[e["dtype"]], 0, name)
        e = header["final_norm.weight"]
        begin = 8 + hlen + e["data_offsets"][0]
        bits = np.frombuffer(raw[begin:begin + 2 * 64], dtype="<u2")
        np.testing.assert_array_equal(
            bits, checkpoint.f32_to_bf16_bits(state["final_norm.weight"].astype(np.float32)))

    def _corrupt(self, mutate, split=False):
        """Saves case mha_e1, lets `mutate(arrays)` edit the main file's tensors, rewrites it."""
        config, state = case_state("mha_e1")
        checkpoint.save(state, config, self.tmp, split=split)
        fname = checkpoint.DENSE_NAME if split else checkpoint.SINGLE_NAME
        arrays, _ = checkpoint.read_safetensors(self.path(fname))
        arrays = {k: (dt, np.array(a)) for k, (dt, a) in arrays.items()}
        mutate(arrays)
        checkpoint.write_safetensors(self.path(fname), arrays)
        return fname

    def assertRefused(self, *needles):
        with self.assertRaises(CheckpointError) as ctx:
            checkpoint.load(self.tmp)
        for needle in needles:
            self.assertIn(needle, str(ctx.exception))

    def test_refuses_missing_tensor(self):
        self._corrupt(lambda a: a.pop("layers.2.ffn.up_proj.weight"))
        self.assertRefused("missing tensor layers.2.ffn.up_proj.weight", "model.safetensors")

    def test_refuses_extra_tensor(self):
        self._corrupt(lambda a: a.__setitem__("memory.7.keys", ("F32", np.zeros(3, np.float32))))
        self.assertRefused("model.safetensors", "extra tensor memory.7.keys")

    def test_refuses_wrong_shape_and_dtype(self):
        self._corrupt(lambda a: a.__setitem__("final_norm.weight", ("F32", np.ones(63, "f4"))))
        self.assertRefused("model.safetensors", "final_norm.weight", "shape")
        self._corrupt(lambda a: a.__setitem__("final_norm.weight", ("I64", np.ones(64, "i8"))))
        self.assertRefused("model.safetensors", "final_norm.weight", "dtype")
        self._corrupt(lambda a: a.__setitem__("memory.0.shuffle_index",
                                              ("F32", a["memory.0.shuffle_index"][1].astype("f4"))))
        self.assertRefused("memory.0.shuffle_index", "dtype")

    def test_refuses_non_permutation(self):
        def dup(arrays):
            idx = arrays["memory.0.shuffle_index"][1]
            idx[5] = idx[6]
        self._corrupt(dup)
        self.assertRefused("model.safetensors", "memory.0.shuffle_index", "permutation")

        def out_of_range(arrays):
            arrays["memory.0.shuffle_index"][1][0] = 64
        self._corrupt(out_of_range)
        self.assertRefused("memory.0.shuffle_index", "permutation")

    def test_refuses_header_outside_file(self):
        self._corrupt(lambda a: None)
        path = self.path("model.safetensors")
        with open(path, "rb") as f:
            raw = f.read()
        with open(path, "wb") as f:
            f.write(raw[:-10])  # truncate: the last tensor's range now ends past the file
        self.assertRefused("model.safetensors", "outside")
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw[8:])
        self.assertRefused("model.safetensors", "header length")

    def test_refuses_index_mismatch(self):
        config, state = case_state("mha_e1")
        checkpoint.save(state, config, self.tmp, split=True)
        with open(self.path(checkpoint.INDEX_NAME)) as f:
            index = json.load(f)
        index["weight_map"]["memory.0.values"] = checkpoint.DENSE_NAME
        with open(self.path(checkpoint.INDEX_NAME), "w") as f:
            json.dump(index, f)
        self.assertRefused("memory.0.values")


class ModelTest(unittest.TestCase):
    def test_causality_prefix_matches(self):
        for name in ("shared_output_block_bf16_split", "dense"):
            config, state = case_state(name, seed=3)
            model = model_from_state(config, state)
            tokens = tokens_for(config, 14, seed=1)
            with torch.no_grad():
                full, rows = model(tokens, return_rows=True)
                for T in (1, 5, 13):
                    part, prow = model(tokens[:, :T], return_rows=True)
                    torch.testing.assert_close(part, full[:, :T], rtol=1e-12, atol=1e-12)
                    self.assertTrue(torch.equal(prow, rows[:, :, :T]))

    def test_batch_matches_single(self):
        config, state = case_state("gqa_tied_e4_split", seed=2)
        model = model_from_state(config, state)
        batch = torch.cat([tokens_for(config, 11, seed=s) for s in range(3)])
        with torch.no_grad():
            logits, rows = model(batch, return_rows=True)
            self.assertEqual(tuple(rows.shape), (2, 3, 11, 8))
            for b in range(3):
                lb, rb = model(batch[b:b + 1], return_rows=True)
                torch.testing.assert_close(lb[0], logits[b], rtol=1e-12, atol=1e-12)
                self.assertTrue(torch.equal(rb[:, 0], rows[:, b]))

    def test_memory_layer_matches_loops(self):
        for name in ("e9_r3_h3_same_block_bf16", "shared_output_block_bf16_split", "f16_i32",
                     "wide_e9_h2"):
            config, state = case_state(name, seed=5)
            model = model_from_state(config, state)
            xs = torch.from_numpy(np.random.default_rng(7).standard_normal((6, 64)))
            with torch.no_grad():
                o, t = model.memory[0](xs)
            for i in range(xs.shape[0]):
                o_ref, t_ref = slow_reference.memory_layer(state, 0, config, xs[i].numpy())
                np.testing.assert_allclose(o[i].numpy(), o_ref, rtol=1e-10, atol=1e-10,
                                           err_msg=name)
                self.assertEqual(t[i].tolist(), t_ref, name)

    def test_full_model_matches_loops(self):
        for name in ("three_layers_bf16_i32", "e9_r3_h3_same_block_bf16", "dense"):
            config, state = case_state(name, seed=11)
            model = model_from_state(config, state)
            tokens = tokens_for(config, 6, seed=4)
            with torch.no_grad():
                logits, rows = model(tokens, return_rows=True)
            ref_logits, ref_rows = slow_reference.forward(state, config, tokens[0].tolist())
            np.testing.assert_allclose(logits[0].numpy(), ref_logits, rtol=1e-9, atol=1e-9,
                                       err_msg=name)
            if rows.shape[0]:
                np.testing.assert_array_equal(rows[:, 0].numpy(), ref_rows)

    def test_t_is_shuffle_of_virtual(self):
        config, state = case_state("mha_e1", seed=9)  # one memory layer: its input ignores shuffle
        md = memory_dims(config)
        perm = state["memory.0.shuffle_index"]
        identity = dict(state)
        identity["memory.0.shuffle_index"] = np.arange(md.virtual, dtype=np.int64)
        tokens = tokens_for(config, 16, seed=2)
        with torch.no_grad():
            _, rows_perm = model_from_state(config, state)(tokens, return_rows=True)
            _, virtual = model_from_state(config, identity)(tokens, return_rows=True)
        np.testing.assert_array_equal(rows_perm.numpy(), perm[virtual.numpy()])
        self.assertTrue((virtual >= 0).all() and (virtual < md.virtual).all())
        per_head = virtual.view(-1, md.H, md.m)
        for sel in per_head.reshape(-1, md.m).tolist():
            self.assertEqual(len(set(sel)), md.m)  # one head never picks a value twice

    def test_ties_go_to_lower_index(self):
        config, state = case_state("gqa_tied_e4_split", seed=1)
        state = dict(state)
        keys = state["memory.0.keys"].copy()
        keys[:] = keys[:, :, :1]  # every key equal: all proxies and all grid scores tie
        state["memory.0.keys"] = keys
        md = memory_dims(config)
        model = model_from_state(config, state)
        with torch.no_grad():
            _, t = model.memory[0](torch.randn(3, 64, dtype=torch.float64))
        want = state["memory.0.shuffle_index"][np.arange(md.m)]  # x = 0, y = 0..m-1
        for row in t.view(3, md.H, md.m).tolist():
            for head in row:
                self.assertEqual(head, want.tolist())

    def test_float32_close_to_float64(self):
        config, state = case_state("wide_e9_h2", seed=4)
        tokens = tokens_for(config, 12, seed=8)
        with torch.no_grad():
            l64 = model_from_state(config, state)(tokens)
            l32 = model_from_state(config, state, dtype=torch.float32)(tokens)
        err = (l32.double() - l64).abs().amax(-1) / l64.abs().amax(-1)
        self.assertLess(err.max().item(), 1e-5)

    def test_gradients_reach_every_parameter(self):
        config, state = case_state("shared_output_block_bf16_split", seed=6)
        model = model_from_state(config, state, dtype=torch.float32).train()
        tokens = tokens_for(config, 12, seed=3).repeat(2, 1)
        logits = model(tokens)
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 tokens[:, 1:].reshape(-1))
        loss.backward()
        for name, p in model.named_parameters():
            self.assertIsNotNone(p.grad, name)
            self.assertGreater(p.grad.abs().sum().item(), 0.0, name)
        for j in range(2):
            names = {n for n, _ in model.named_parameters()}
            for want in ("values", "keys", "tucker_core.0", "query_proj.weight"):
                self.assertIn(f"memory.{j}.{want}", names)
        buffers = {n for n, _ in model.named_buffers()}
        self.assertIn("memory.1.shuffle_index", buffers)
        self.assertIn("memory.1.tucker_core_u", buffers)

    def test_state_dict_names_are_checkpoint_names(self):
        for name in random_checkpoint.CASES:
            config, state = case_state(name)
            model = UltraMemModel(config)
            self.assertEqual(set(model.state_dict()), set(state), name)

    def test_refresh_tucker_uv(self):
        config, state = case_state("three_layers_bf16_i32", seed=2)
        model = model_from_state(config, state)
        layer = model.memory[1]
        u0, v0 = layer.tucker_core_u.clone(), layer.tucker_core_v.clone()
        layer.refresh_tucker_uv()  # same cores: same vectors (the generator used the same SVD)
        torch.testing.assert_close(layer.tucker_core_u, u0, rtol=0, atol=1e-12)
        torch.testing.assert_close(layer.tucker_core_v, v0, rtol=0, atol=1e-12)
        layer.tucker_core_u.neg_()
        layer.tucker_core_v.neg_()
        layer.refresh_tucker_uv()  # the sign stays continuous
        torch.testing.assert_close(layer.tucker_core_u, -u0, rtol=0, atol=1e-12)
        total = sum(c.detach() for c in layer.tucker_core)
        for head in range(total.shape[0]):
            sigma = torch.linalg.svdvals(total[head])[0]
            approx = layer.tucker_core_u[head] @ total[head] @ layer.tucker_core_v[head]
            torch.testing.assert_close(approx, sigma, rtol=1e-10, atol=1e-10)

    def test_reset_parameters_runs(self):
        config = random_checkpoint.case_config("gqa_tied_e4_split")
        torch.manual_seed(0)
        model = UltraMemModel(config)
        model.reset_parameters()
        idx = model.memory[0].shuffle_index
        self.assertTrue(torch.equal(idx.sort().values, torch.arange(idx.numel())))
        self.assertTrue(torch.isfinite(model(tokens_for(config, 5))).all())


class CliAndCasesTest(TempDirTest):
    def test_cases_cover_the_brief(self):
        configs = {name: random_checkpoint.case_config(name) for name in random_checkpoint.CASES}
        mems = [c["memory"] for c in configs.values() if c.get("memory")]
        self.assertTrue({1, 4, 9} <= {m["value_expand"] for m in mems})
        self.assertTrue({2, 3} <= {m["tucker_rank"] for m in mems})
        self.assertTrue({1, 2, 3} <= {m["tucker_cores"] for m in mems})
        self.assertTrue({1, 2} <= {m["heads"] for m in mems})
        self.assertTrue(any(a == b for m in mems for a, b in m["layers"]))
        self.assertTrue(any(len({b for _, b in m["layers"]}) < len(m["layers"]) for m in mems))
        self.assertTrue(any(not c.get("memory") for c in configs.values()))
        kv = {c["num_attention_heads"] == c["num_key_value_heads"] for c in configs.values()}
        self.assertEqual(kv, {True, False})
        self.assertEqual({c["tie_word_embeddings"] for c in configs.values()}, {True, False})
        specs = random_checkpoint.CASES.values()
        self.assertTrue({"F32", "BF16"} <= {s[2] for s in specs})
        self.assertEqual({s[3] for s in specs}, {True, False})

    def test_generator_is_deterministic(self):
        a, b = self.path("a"), self.path("b")
        random_checkpoint.generate("wide_e9_h2", 42, a)
        random_checkpoint.generate("wide_e9_h2", 42, b)
        for fname in os.listdir(a):
            with open(os.path.join(a, fname), "rb") as fa, open(os.path.join(b, fname), "rb") as fb:
                self.assertEqual(fa.read(), fb.read(), fname)
        random_checkpoint.generate("wide_e9_h2", 43, b)
        with open(os.path.join(a, checkpoint.DENSE_NAME), "rb") as fa, \
                open(os.path.join(b, checkpoint.DENSE_NAME), "rb") as fb:
            self.assertNotEqual(fa.read(), fb.read())

    def test_score_cli(self):
        env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
        out = subprocess.run([sys.executable, "-m", "ultramem_ref.random_checkpoint",
                              "--list-cases"], env=env, capture_output=True, text=True, check=True)
        for name in random_checkpoint.CASES:
            self.assertIn(name, out.stdout)
        model_dir = self.path("m")
        subprocess.run([sys.executable, "-m", "ultramem_ref.random_checkpoint", "--case",
                        "gqa_tied_e4_split", "--seed", "5", "--out", model_dir], env=env,
                       check=True, capture_output=True)
        text = self.path("t.txt")
        with open(text, "wb") as f:
            f.write(b"Hello, memory!\xff\x00")
        res = subprocess.run([sys.executable, "-m", "ultramem_ref.score", "--model", model_dir,
                              "--text", text, "--logits-out", self.path("l.npy"),
                              "--rows-out", self.path("r.npy"), "--threads", "1"],
                             env=env, capture_output=True, text=True, check=True)
        logits, rows = np.load(self.path("l.npy")), np.load(self.path("r.npy"))
        self.assertEqual((logits.shape, logits.dtype), ((16, 300), np.float32))
        self.assertEqual((rows.shape, rows.dtype), ((2, 16, 8), np.int64))
        _, model = checkpoint.load(model_dir, dtype=torch.float64)
        tokens = list(b"Hello, memory!\xff\x00")
        want_logits, want_rows, nll, _ = score_tokens(model, tokens)
        np.testing.assert_array_equal(logits, want_logits)
        np.testing.assert_array_equal(rows, want_rows)
        ppl = float(res.stdout.split("perplexity:")[1].split()[0])
        self.assertAlmostEqual(ppl, math.exp(nll.mean()), delta=1e-5 * ppl)
        bad = subprocess.run([sys.executable, "-m", "ultramem_ref.score", "--model", model_dir,
                              "--tokens", "1,2,300"], env=env, capture_output=True, text=True)
        self.assertNotEqual(bad.returncode, 0)


@unittest.skipUnless(torch.cuda.is_available(), "no CUDA device")
class GpuTest(unittest.TestCase):
    def test_gpu_matches_cpu(self):
        for name in ("shared_output_block_bf16_split", "wide_e9_h2", "three_layers_bf16_i32"):
            config, state = case_state(name, seed=12)
            tokens = tokens_for(config, 16, seed=5).repeat(2, 1)
            with torch.no_grad():
                l_cpu, r_cpu = model_from_state(config, state)(tokens, return_rows=True)
                gpu = model_from_state(config, state, device="cuda")
                l_gpu, r_gpu = gpu(tokens.cuda(), return_rows=True)
            torch.testing.assert_close(l_gpu.cpu(), l_cpu, rtol=1e-10, atol=1e-10)
            self.assertTrue(torch.equal(r_gpu.cpu(), r_cpu), name)
        model = model_from_state(config, state, dtype=torch.float32, device="cuda").train()
        logits = model(tokens.cuda())
        logits.square().mean().backward()
        self.assertGreater(model.memory[0].values.grad.abs().sum().item(), 0)

    def test_gpu_ties_go_to_lower_index(self):
        scores = torch.zeros(3, 2, 5000, device="cuda")
        scores[..., 4000:] = 1.0
        for m in (1, 7, 64):
            want = torch.arange(4000, 4000 + m, device="cuda").expand(3, 2, m)
            self.assertTrue(torch.equal(top_m(scores, m), want))
            self.assertTrue(torch.equal(top_m(scores.double(), m), want))


if __name__ == "__main__":
    unittest.main()
