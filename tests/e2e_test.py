"""End-to-end (issue 5): the local cluster as scripts/serve.sh starts it (two memory servers, a
compute node, the gateway), driven by an independent Python client (Debian's python3-grpcio with
stubs generated from proto/), and scraped by a real Prometheus server.

  /usr/bin/python3 tests/e2e_test.py [--build build]
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import pystubs  # noqa: E402
from cluster import free_port  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build")
MODEL = os.path.join(ROOT, "models", "ultramem-tiny")
TOKEN = "e2e-secret-token"
chat, chat_grpc, health, health_grpc = pystubs.load()


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = predicate()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


def http_get(url, timeout=2):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


class EndToEndTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="um_e2e_")
        # Every port 0: the processes pick free ones and serve.sh reports them (ENDPOINTS line), so
        # nothing can take a port between a test's pick and a server's bind.
        env = dict(os.environ, UM_BUILD_DIR=os.path.relpath(BUILD, ROOT), UM_STATE_DIR=cls.tmp + "/state",
                   UM_GATEWAY_PORT="0", UM_COMPUTE_PORT="0", UM_MEMORY_PORTS="0,0", UM_METRICS_PORTS="0,0,0,0",
                   ULTRAMEM_AUTH_TOKEN=TOKEN)
        cls.serve = subprocess.Popen([os.path.join(ROOT, "scripts", "serve.sh"), "--no-build"], cwd=ROOT,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        cls.serve_out = []
        deadline = time.time() + 180
        while time.time() < deadline:
            line = cls.serve.stdout.readline()
            if not line:
                raise AssertionError("serve.sh exited:\n" + "".join(cls.serve_out))
            cls.serve_out.append(line)
            if line.startswith("ENDPOINTS "):
                fields = dict(kv.split("=", 1) for kv in line.split()[1:])
            if line.strip() == "READY":
                break
        threading.Thread(target=lambda: [None for _ in cls.serve.stdout], daemon=True).start()
        metrics = [int(p) for p in fields["metrics"].split(",")]
        cls.metrics = dict(zip(["gateway", "compute", "memory-0", "memory-1"], metrics))
        cls.endpoint = fields["gateway"]
        cls.channel = grpc.insecure_channel(cls.endpoint)
        cls.stub = chat_grpc.ChatServiceStub(cls.channel)
        cls.auth = [("authorization", "Bearer " + TOKEN)]

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        if cls.serve.poll() is None:
            cls.serve.send_signal(signal.SIGINT)
            try:
                cls.serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(cls.serve.pid, signal.SIGKILL)
                cls.serve.wait()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def request(self, text, **sampling):
        return chat.ChatRequest(messages=[chat.ChatMessage(role=chat.ROLE_USER, content=text)],
                                sampling=chat.SamplingParams(**sampling))

    def chat_text(self, req, metadata=None):
        text, last = "", None
        for c in self.stub.Chat(req, metadata=self.auth if metadata is None else metadata, timeout=60):
            text += c.text
            last = c
        return text, last

    def assert_code(self, req, code, metadata=None, contains=None):
        with self.assertRaises(grpc.RpcError) as cm:
            self.chat_text(req, metadata=metadata)
        self.assertEqual(cm.exception.code(), code, cm.exception.details())
        self.assertTrue(cm.exception.details(), "an error needs a message")
        if contains:
            self.assertIn(contains, cm.exception.details())
        return cm.exception.details()

    def test_1_health_serving(self):
        h = health_grpc.HealthStub(self.channel).Check(health.HealthCheckRequest(), timeout=5)
        self.assertEqual(h.status, health.HealthCheckResponse.SERVING)

    def test_2_greedy_stream_equals_generate(self):
        prompt = "And God said"
        ref = subprocess.run([os.path.join(BUILD, "bin", "ultramem-generate"), "--model", MODEL, "--prompt",
                              prompt, "--max-tokens", "64"], capture_output=True, check=True).stdout
        text, last = self.chat_text(self.request(prompt, max_tokens=64))
        self.assertEqual(text.encode(), ref[:-1])  # generate ends its output with a newline
        self.assertIn(last.finish_reason, (chat.FINISH_REASON_LENGTH, chat.FINISH_REASON_STOP))
        self.assertEqual(last.usage.prompt_tokens, len(prompt) + 1)  # <|bos|> + bytes
        self.assertGreater(last.usage.completion_tokens, 0)
        self.assertGreater(last.usage.time_to_first_token_seconds, 0)

    def test_3_auth(self):
        self.assert_code(self.request("hi"), grpc.StatusCode.UNAUTHENTICATED, metadata=[])
        self.assert_code(self.request("hi"), grpc.StatusCode.UNAUTHENTICATED,
                         metadata=[("authorization", "Bearer wrong")])

    def test_4_bad_requests(self):
        bad = {
            "empty messages": chat.ChatRequest(),
            "unknown role": chat.ChatRequest(messages=[chat.ChatMessage(role=7, content="hi")]),
            "negative max_tokens": self.request("hi", max_tokens=-1),
            "temperature below 0": self.request("hi", temperature=-0.5),
            "prompt longer than the context": self.request("x" * 600),
        }
        for name, req in bad.items():
            with self.subTest(name):
                msg = self.assert_code(req, grpc.StatusCode.INVALID_ARGUMENT)
                print("  %s -> INVALID_ARGUMENT: %s" % (name, msg), flush=True)

    def test_5_concurrent_streams(self):
        results, errors = [], []

        def one(i):
            try:
                text, last = self.chat_text(self.request("Blessed are ", max_tokens=24, temperature=0.8,
                                                         seed=i))
                results.append((text, last.usage.completion_tokens))
            except Exception as e:  # noqa: BLE001
                errors.append(e)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        self.assertEqual(len(results), 32)
        self.assertTrue(all(n > 0 for _, n in results))

    def running_gauge(self):
        text = http_get("http://127.0.0.1:%d/metrics" % self.metrics["compute"])
        for line in text.splitlines():
            if line.startswith("ultramem_requests_running"):
                return float(line.split()[-1])
        raise AssertionError("ultramem_requests_running not exported")

    def test_6_cancel_frees_slot(self):
        stream = self.stub.Chat(self.request("In the beginning", max_tokens=400), metadata=self.auth, timeout=60)
        next(stream)  # generation is running
        wait_for(lambda: self.running_gauge() >= 1, 10, "the running gauge to show the request")
        stream.cancel()
        wait_for(lambda: self.running_gauge() == 0, 10, "the running gauge to return to 0")

    def test_7_prometheus_scrapes_everything(self):
        prom = shutil.which("prometheus")
        self.assertIsNotNone(prom, "Debian's prometheus package is required")
        port = free_port()
        cfg = os.path.join(self.tmp, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global: {scrape_interval: 1s}\nscrape_configs:\n")
            for job, p in self.metrics.items():
                f.write("  - job_name: %s\n    static_configs: [{targets: ['127.0.0.1:%d']}]\n" % (job, p))
        self.chat_text(self.request("And God said", max_tokens=8))  # something to count
        proc = subprocess.Popen([prom, "--config.file", cfg, "--storage.tsdb.path", os.path.join(self.tmp, "tsdb"),
                                 "--web.listen-address", "127.0.0.1:%d" % port],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            def query(q):
                try:
                    body = http_get("http://127.0.0.1:%d/api/v1/query?query=%s" % (port, urllib.parse.quote(q)))
                except OSError:
                    return None
                return json.loads(body)["data"]["result"]
            up = wait_for(lambda: (lambda r: r if r and len(r) == 4 and all(x["value"][1] == "1" for x in r) else None)(
                query("up")), 60, "all four targets up in Prometheus")
            self.assertEqual(len(up), 4)
            for series in ["ultramem_generation_tokens_total", "ultramem_time_to_first_token_seconds_count",
                           "ultramem_memory_lookup_latency_seconds_count", "ultramem_memory_client_lookup_latency_seconds_count",
                           "ultramem_gateway_requests_total"]:
                r = wait_for(lambda: query(series), 30, series)
                print("  prometheus has %s: %d series" % (series, len(r)), flush=True)
        finally:
            proc.terminate()
            proc.wait(30)

    def test_8_stop_everything(self):
        # Last: Ctrl-C stops every process serve.sh started.
        pids = subprocess.run(["pgrep", "-s", str(self.serve.pid)], capture_output=True, text=True).stdout.split()
        self.assertGreaterEqual(len(pids), 4)
        self.serve.send_signal(signal.SIGINT)
        self.serve.wait(timeout=60)
        left = subprocess.run(["pgrep", "-s", str(self.serve.pid)], capture_output=True, text=True).stdout.split()
        self.assertEqual(left, [], "processes left after Ctrl-C")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    args, rest = ap.parse_known_args()
    BUILD = os.path.abspath(args.build)
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
