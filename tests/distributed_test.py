"""Distributed inference (issue 4) with real processes on loopback: a model split over 3 memory
shards by rows and by columns, 2 replicas each, against the in-process engine.

  /usr/bin/python3 tests/distributed_test.py [--build build]
"""
import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from cluster import Cluster, free_port  # noqa: E402

BUILD = "build"
CONFIG = {
    "model_type": "ultramem", "vocab_size": 300, "hidden_size": 192, "num_layers": 6,
    "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 32, "intermediate_size": 384,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
    "memory": {"layers": [[0, 2], [2, 4], [3, 5]], "knum": 32, "value_expand": 4, "key_dim": 32,
               "value_dim": 64, "heads": 2, "topk": 8, "tucker_rank": 2, "tucker_cores": 2,
               "norm_eps": 1e-5},
    "tokenizer": {"type": "bytes", "special_tokens": {"<|bos|>": 256, "<|eos|>": 257}},
}
N, DV = 32 * 32, 64
# Shards: rows [0, N/2) all columns; rows [N/2, N) split into two column halves.
SHARDS = [("rows-lo", (0, N // 2), (0, DV)),
          ("rows-hi-cols-lo", (N // 2, N), (0, DV // 2)),
          ("rows-hi-cols-hi", (N // 2, N), (DV // 2, DV))]
MODEL_ID = "dist-test"


def shard_map_text(addresses, model_id=MODEL_ID, timeout_ms=2000):
    out = ['model_id: "%s"' % model_id, "lookup_timeout_ms: %d" % timeout_ms]
    for (name, rows, cols), addrs in zip(SHARDS, addresses):
        out.append("shards {")
        out.append('  name: "%s"' % name)
        out.append("  block { row_begin: %d row_end: %d col_begin: %d col_end: %d }" %
                   (rows[0], rows[1], cols[0], cols[1]))
        for a in addrs:
            out.append('  replicas: "%s"' % a)
        out.append("}")
    return "\n".join(out) + "\n"


class DistributedTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.c = Cluster(BUILD)
        seed = int(os.environ.get("UM_SEED", random.randrange(1 << 30)))
        print("distributed_test seed", seed, flush=True)
        cls.model = cls.c.make_checkpoint("model", CONFIG, seed=seed, scale=0.08)
        cls.stores = []
        for s, (name, rows, cols) in enumerate(SHARDS):
            pair = []
            for r in range(2):
                pair.append(cls.c.import_store(cls.model, cls.c.path("store-%s-%d" % (name, r)),
                                               MODEL_ID, rows=rows, cols=cols))
            cls.stores.append(pair)
        cls.servers = [[cls.c.start_memory_server(st) for st in pair] for pair in cls.stores]
        cls.map_path = cls.c.path("shards.pbtxt")
        with open(cls.map_path, "w") as f:
            f.write(shard_map_text([[addr for _, addr in pair] for pair in cls.servers]))
        cls.tokens = ",".join(str(random.Random(seed).randrange(256)) for _ in range(40))

    @classmethod
    def tearDownClass(cls):
        cls.c.close()

    def score(self, *extra, check=True):
        out = self.c.path("logits-%d.npy" % random.randrange(1 << 30))
        r = self.c.run("ultramem-score", "--model", self.model, "--tokens", self.tokens,
                       "--logits-out", out, *extra, check=check)
        return r, (np.load(out) if r.returncode == 0 else None)

    def generate(self, *extra, **kw):
        return self.c.run("ultramem-generate", "--model", self.model, "--prompt", "The memory ",
                          "--max-tokens", 64, "--ignore-eos", *extra, **kw)

    def assert_logits_close(self, got, ref):
        """Relative error per position as ||got - ref||_2 / ||ref||_2, at most 1e-6.

        Row shards return float32 partial sums, so pooled values may differ from the in-process
        ones in the last bit; the max-abs ratio is printed too, for information."""
        rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
        rel_max = np.abs(got - ref).max(axis=1) / np.abs(ref).max(axis=1)
        print("  relative error per position: max L2 %.3g, max-abs ratio %.3g" %
              (rel.max(), rel_max.max()), flush=True)
        self.assertLessEqual(rel.max(), 1e-6, "per-position relative error %s" % rel.max())

    def test_1_logits_match_in_process(self):
        _, ref = self.score()
        _, dist = self.score("--shard-map", self.map_path)
        self.assert_logits_close(dist, ref)
        _, ref_decode = self.score("--decode")
        _, dist_decode = self.score("--shard-map", self.map_path, "--decode")
        self.assert_logits_close(dist_decode, ref_decode)

    def test_2_greedy_tokens_identical(self):
        ref = self.generate().stdout
        dist = self.generate("--shard-map", self.map_path)
        self.assertEqual(dist.stdout, ref)
        self.assertGreater(len(ref), 16)  # 64 tokens of bytes, possibly merged by UTF-8 decoding

    def test_3_kill_one_replica_during_generation(self):
        cmd = [os.path.join(self.c.bin, "ultramem-generate"), "--model", self.model, "--prompt",
               "The memory ", "--max-tokens", "600", "--ignore-eos"]
        ref = subprocess.run(cmd, capture_output=True, check=True).stdout  # bytes, untranslated
        gen = subprocess.Popen(cmd + ["--shard-map", self.map_path], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        first = gen.stdout.read(1)  # generation has started
        gen.send_signal(signal.SIGSTOP)
        victim, _ = self.servers[1][0]
        self.c.kill(victim)
        gen.send_signal(signal.SIGCONT)
        rest, err = gen.communicate(timeout=120)
        self.assertEqual(gen.returncode, 0, err.decode())
        self.assertEqual(first + rest, ref)
        self.assertGreater(len(rest), 100, "the generation ended before the replica was killed")
        self.assertIn("retries", err.decode())
        # Bring the replica back for the next tests.
        self.servers[1][0] = self.c.start_memory_server(self.stores[1][0],
                                                        port=int(self.servers[1][0][1].split(":")[1]))

    def test_3b_hung_replica_is_hedged(self):
        ref = self.generate().stdout
        victim, _ = self.servers[0][1]
        victim.send_signal(signal.SIGSTOP)  # alive but silent: only a hedge (or the deadline) helps
        try:
            t0 = time.time()
            dist = self.generate("--shard-map", self.map_path)
            elapsed = time.time() - t0
        finally:
            victim.send_signal(signal.SIGCONT)
        self.assertEqual(dist.stdout, ref)
        hedges = int(re.search(r"hedges (\d+)", dist.stderr).group(1))
        print("  hung replica: %d hedges, %.2f s" % (hedges, elapsed), flush=True)
        self.assertGreater(hedges, 0)
        self.assertLess(elapsed, 10.0)

    def test_4_all_replicas_of_a_block_down_then_back(self):
        ports = [int(addr.split(":")[1]) for _, addr in self.servers[2]]
        for p, _ in self.servers[2]:
            self.c.kill(p)
        t0 = time.time()
        r, _ = self.score("--shard-map", self.map_path, check=False)
        elapsed = time.time() - t0
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("UNAVAILABLE", r.stderr)
        self.assertIn("rows-hi-cols-hi", r.stderr)
        self.assertLess(elapsed, 2.0 + 3.0, "failed after %.1f s, deadline 2 s" % elapsed)
        self.servers[2] = [self.c.start_memory_server(st, port=pt)
                           for st, pt in zip(self.stores[2], ports)]
        _, ref = self.score()
        _, dist = self.score("--shard-map", self.map_path)
        self.assert_logits_close(dist, ref)

    def test_5_replica_of_another_model_is_refused(self):
        other = self.c.make_checkpoint("other", CONFIG, seed=99)
        store = self.c.import_store(other, self.c.path("store-other"), "another-model",
                                    rows=SHARDS[0][1], cols=SHARDS[0][2])
        _, addr = self.c.start_memory_server(store)
        addrs = [[a for _, a in pair] for pair in self.servers]
        addrs[0] = [addrs[0][0], addr]
        path = self.c.path("bad.pbtxt")
        with open(path, "w") as f:
            f.write(shard_map_text(addrs))
        r, _ = self.score("--shard-map", path, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("FAILED_PRECONDITION", r.stderr)
        self.assertIn(addr, r.stderr)
        self.assertIn("another-model", r.stderr)

    def test_7_mutual_tls_to_memory_servers(self):
        d = self.c.path("tls")
        os.makedirs(d)

        def sh(cmd):
            subprocess.run(["bash", "-c", cmd], cwd=d, check=True, capture_output=True)
        sh("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=um-test-ca -keyout ca.key -out ca.pem")
        for name, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:compute")):
            sh("openssl req -newkey rsa:2048 -nodes -subj /CN=%s -keyout %s.key -out %s.csr" % (name, name, name))
            sh("openssl x509 -req -in %s.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out %s.pem "
               "-extfile <(printf 'subjectAltName=%s')" % (name, name, san))
        tls = ["--tls-cert", d + "/server.pem", "--tls-key", d + "/server.key", "--tls-client-ca", d + "/ca.pem"]
        addrs = [[self.c.start_memory_server(pair[1], extra=tls)[1]] for pair in self.stores]
        path = self.c.path("tls.pbtxt")
        with open(path, "w") as f:
            f.write(shard_map_text(addrs))
        _, ref = self.score()
        _, dist = self.score("--shard-map", path, "--memory-tls-ca", d + "/ca.pem", "--memory-tls-cert",
                             d + "/client.pem", "--memory-tls-key", d + "/client.key")
        self.assert_logits_close(dist, ref)
        # Without a client certificate, and in plaintext, the servers refuse the connection.
        r, _ = self.score("--shard-map", path, "--memory-tls-ca", d + "/ca.pem", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("UNAVAILABLE", r.stderr)
        r, _ = self.score("--shard-map", path, check=False)
        self.assertNotEqual(r.returncode, 0)

    def test_8_compute_node_survives_a_dead_block(self):
        """A compute node serving chats: a dead block fails its requests with UNAVAILABLE naming
        the block and turns health NOT_SERVING; the node recovers when the block returns."""
        import grpc
        import pystubs
        chat, chat_grpc, health, health_grpc = pystubs.load()
        port = free_port()
        log = open(self.c.path("compute.log"), "w")
        node = subprocess.Popen([os.path.join(self.c.bin, "ultramem-compute-node"), "--model", self.model,
                                 "--shard-map", self.map_path, "--listen", "127.0.0.1:%d" % port,
                                 "--metrics-listen", "", "--health-interval-ms", "100"],
                                stdout=subprocess.PIPE, stderr=log, text=True)
        self.c.procs.append(node)
        while not node.stdout.readline().startswith("SERVING"):
            self.assertIsNone(node.poll(), "compute node exited")
        ch = grpc.insecure_channel("127.0.0.1:%d" % port)
        stub, hstub = chat_grpc.ChatServiceStub(ch), health_grpc.HealthStub(ch)
        req = chat.ChatRequest(messages=[chat.ChatMessage(role=chat.ROLE_USER, content="The memory ")],
                               sampling=chat.SamplingParams(max_tokens=16))

        def status():
            return hstub.Check(health.HealthCheckRequest(), timeout=5).status

        def wait_status(want):
            # grpc.health.v1 Watch streams every change: the event itself, with a deadline.
            for r in hstub.Watch(health.HealthCheckRequest(), timeout=20):
                if r.status == want:
                    return
        def tokens_of_chat():
            # Greedy, so the same tokens every time. Chunks are not counted: UTF-8-safe chunking
            # merges bytes, and a random model may stop early at EOS.
            chunks = list(stub.Chat(req, timeout=30))
            ids = [t for c in chunks for t in c.token_ids]
            self.assertTrue(chunks[-1].finish_reason, "the stream did not finish")
            self.assertEqual(len(ids), chunks[-1].usage.completion_tokens)
            self.assertGreater(len(ids), 0)
            self.assertLessEqual(len(ids), 16)
            return ids

        self.assertEqual(status(), health.HealthCheckResponse.SERVING)
        before = tokens_of_chat()
        ports = [int(addr.split(":")[1]) for _, addr in self.servers[1]]
        for p, _ in self.servers[1]:
            self.c.kill(p)
        t0 = time.time()
        with self.assertRaises(grpc.RpcError) as cm:
            list(stub.Chat(req, timeout=30))
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("rows-hi-cols-lo", cm.exception.details())
        self.assertLess(time.time() - t0, 5.0)
        wait_status(health.HealthCheckResponse.NOT_SERVING)
        self.servers[1] = [self.c.start_memory_server(st, port=pt) for st, pt in zip(self.stores[1], ports)]
        wait_status(health.HealthCheckResponse.SERVING)
        self.assertEqual(tokens_of_chat(), before)
        ch.close()
        node.terminate()
        self.assertEqual(node.wait(30), 0)
        log.close()

    def test_9_synthetic_values_match_in_process(self):
        """A checkpoint with synthetic value tables (bench/scaleout's kind): memory servers serve
        manifest-only stores whose rows they compute; the compute node gets the same logits as
        the in-process engine computing the same function."""
        model = self.c.make_checkpoint("synthetic", CONFIG, seed=7, dtype="BF16", scale=0.08,
                                       synthetic_seed=11)
        servers = []
        for name, rows, cols in SHARDS:
            store = self.c.import_store(model, self.c.path("store-synthetic-" + name), "synthetic",
                                        rows=rows, cols=cols)
            version_dir = os.path.join(store, "versions", "v1")
            with open(os.path.join(version_dir, "MANIFEST.json")) as f:
                self.assertEqual(json.load(f)["synthetic_values"]["seed"], 11)
            self.assertFalse(os.path.exists(os.path.join(version_dir, "db")), "rows were written")
            servers.append(self.c.start_memory_server(store))
        map_path = self.c.path("shards-synthetic.pbtxt")
        with open(map_path, "w") as f:
            f.write(shard_map_text([[addr] for _, addr in servers], model_id="synthetic"))
        out_ref, out_dist = self.c.path("synthetic-ref.npy"), self.c.path("synthetic-dist.npy")
        self.c.run("ultramem-score", "--model", model, "--tokens", self.tokens, "--logits-out", out_ref)
        self.c.run("ultramem-score", "--model", model, "--tokens", self.tokens, "--logits-out",
                   out_dist, "--shard-map", map_path)
        self.assert_logits_close(np.load(out_dist), np.load(out_ref))
        for p, _ in servers:
            self.c.kill(p, signal.SIGTERM)
            p.wait(timeout=30)

    def test_6_bad_shard_maps_are_refused(self):
        addrs = [[a for _, a in pair] for pair in self.servers]
        text = shard_map_text(addrs).replace("row_begin: 0 row_end: %d" % (N // 2),
                                             "row_begin: 0 row_end: %d" % (N // 2 - 8))
        path = self.c.path("gap.pbtxt")
        with open(path, "w") as f:
            f.write(text)
        r, _ = self.score("--shard-map", path, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("some rows or columns have no shard", r.stderr)
        with open(path, "w") as f:
            f.write("shards { name: \n")
        r, _ = self.score("--shard-map", path, check=False)
        self.assertIn("line", r.stderr)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    args, rest = ap.parse_known_args()
    BUILD = os.path.abspath(args.build)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
