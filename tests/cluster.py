"""Helpers for tests that start real processes on loopback: free ports, memory servers, imports.

Every process started through a Cluster is killed when the Cluster closes (use it in `with`)."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, build):
        self.bin = os.path.join(build, "bin")
        self.tmp = tempfile.mkdtemp(prefix="um_cluster_")
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        subprocess.run(["rm", "-rf", self.tmp], check=False)

    def path(self, *parts):
        return os.path.join(self.tmp, *parts)

    def run(self, *args, check=True, timeout=300, **kw):
        cmd = [os.path.join(self.bin, args[0])] + [str(a) for a in args[1:]]
        r = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise AssertionError("%s failed (%d):\n%s\n%s" % (" ".join(cmd), r.returncode, r.stdout,
                                                             r.stderr))
        return r

    def make_checkpoint(self, name, config, seed=1, dtype="F32", scale=0.05, synthetic_seed=None):
        """A random checkpoint; with synthetic_seed, its value tables are declared, not stored."""
        cfg_path = self.path(name + ".json")
        with open(cfg_path, "w") as f:
            json.dump(config, f)
        out = self.path(name)
        extra = [] if synthetic_seed is None else ["--synthetic_values_seed", synthetic_seed]
        self.run("ultramem-make-checkpoint", "--config", cfg_path, "--out", out, "--seed", seed,
                 "--dtype", dtype, "--scale", scale, *extra)
        return out

    def import_store(self, model_dir, store, model_id, rows=None, cols=None, version="v1"):
        args = ["ultramem-import", "--checkpoint", model_dir, "--store-dir", store, "--version",
                version, "--model-id", model_id, "--progress", "off"]
        if rows:
            args += ["--rows", "%d:%d" % rows]
        if cols:
            args += ["--cols", "%d:%d" % cols]
        self.run(*args)
        return store

    def start_memory_server(self, store, port=None, extra=(), timeout=60):
        """Starts a memory server and waits until it serves. Returns (process, address)."""
        port = port or free_port()
        addr = "127.0.0.1:%d" % port
        cmd = [os.path.join(self.bin, "ultramem-memory-server"), "--store-dir", store, "--listen",
               addr, "--metrics-listen", "127.0.0.1:0"] + list(extra)
        log = self.path("memory-server-%d-%d.log" % (port, len(self.procs)))
        with open(log, "w") as err:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        self.procs.append(p)
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                p.wait()
                with open(log) as f:
                    tail = f.read()[-2000:]
                raise AssertionError("memory server on %s exited (%s):\n%s" % (addr, p.poll(), tail))
            if line.startswith("SERVING"):
                return p, addr
        raise AssertionError("memory server on %s not serving after %d s" % (addr, timeout))

    @staticmethod
    def kill(p, sig=signal.SIGKILL):
        if p.poll() is None:
            p.send_signal(sig)
        p.wait()
