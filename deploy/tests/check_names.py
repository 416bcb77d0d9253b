#!/usr/bin/env python3
"""Checks that deploy/ and docker-compose.yml use only the names of docs/PROCESSES.md.

    python3 deploy/tests/check_names.py --repo . --k8s RENDERED.yaml [--k8s ...]

- every metric in every Grafana dashboard query and every alert expression is one of PROCESSES.md
  (histogram series: _bucket/_sum/_count stripped; Prometheus's own `up` allowed);
- every flag given to ultramem-* programs in docker-compose.yml, the rendered Kubernetes manifests
  and deploy/docker/memory-init.sh is listed for that program in PROCESSES.md;
- the shard maps tile [0, N) with N = knum^2 of the model, carry the model id the memory pods import
  with, and name the replicas compose and Kubernetes really run; Prometheus's static targets are the
  metrics ports the compose services listen on.
Prints every problem and exits 1 when there is one."""
import argparse
import glob
import json
import os
import re
import shlex
import sys

import yaml

problems = []


def problem(msg):
    problems.append(msg)
    print("PROBLEM: " + msg)


# ---------------------------------------------------------------- PROCESSES.md
def read_contract(path):
    text = open(path).read()
    metrics = set(re.findall(r"\bultramem_[a-z0-9_]+", text))
    flags = {}
    sections = re.split(r"^## ", text, flags=re.M)
    for sec in sections:
        m = re.match(r"(ultramem-[a-z-]+)", sec)
        if not m:
            continue
        prog = m.group(1)
        body = sec.split("metrics:", 1)[0]
        if prog == "ultramem-memory-server" and "ultramem-import" in body:
            server_part, import_part = body.split("ultramem-import", 1)
            flags["ultramem-import"] = set(re.findall(r"--[a-z][a-z0-9-]*", import_part))
            body = server_part
        flags[prog] = set(re.findall(r"--[a-z][a-z0-9-]*", body))
    return metrics, flags


# ---------------------------------------------------------------- metric names in PromQL
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan", "le"}


def metric_names(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)   # strings
    e = re.sub(r"\{[^}]*\}", "", e)                                       # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                                      # ranges, subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", " ", e)                 # Grafana variables
    names = []
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("("):
            continue                                                       # a function
        if word.lower() in KEYWORDS:
            continue
        if re.match(r"^[0-9]", word):
            continue
        # exponent of a number like 1e-9
        if re.match(r"^e[0-9]*$", word) and m.start() > 0 and e[m.start() - 1].isdigit():
            continue
        names.append(word)
    return names


def base_metric(name):
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def check_exprs(where, exprs, metrics):
    allowed = metrics | {"up"}
    n = 0
    for label, expr in exprs:
        names = metric_names(expr)
        if not names:
            problem("%s: %s: no metric in expression %r" % (where, label, expr))
        for name in names:
            n += 1
            if name not in allowed and base_metric(name) not in metrics:
                problem("%s: %s: metric %r is not in docs/PROCESSES.md (expr %r)" % (where, label, name, expr))
            elif name != base_metric(name) and base_metric(name) in metrics and not name.endswith(
                    ("_bucket", "_sum", "_count")):
                pass
    return n


def dashboard_exprs(path):
    d = json.load(open(path))
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if "expr" in t:
                    out.append(("panel %r" % p.get("title"), t["expr"]))
            walk(p.get("panels", []))
    walk(d.get("panels", []))
    for v in d.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v.get("type") == "query" and q:
            out.append(("variable %r" % v.get("name"), q))
    return out


def alert_exprs(path):
    out = []
    for g in yaml.safe_load(open(path))["groups"]:
        for r in g["rules"]:
            out.append(("rule %r" % (r.get("alert") or r.get("record")), r["expr"]))
            if "record" in r:
                problem("%s: recording rule %s: its name would not be in PROCESSES.md" % (path, r["record"]))
    return out


# ---------------------------------------------------------------- flags
def program_and_flags(argv):
    """argv of a container -> list of (program, [flags]) for ultramem-* programs it runs."""
    out = []
    i = 0
    while i < len(argv):
        prog = os.path.basename(argv[i])
        if prog == "ultramem-memory-init":            # wrapper: runs the rest as a command
            out.append((prog, []))
            i += 1
            continue
        if prog.startswith("ultramem-"):
            flags = [a.split("=", 1)[0] for a in argv[i + 1:] if a.startswith("--")]
            out.append((prog, flags))
        break
    return out


OWN_PROGRAMS = {"ultramem-memory-init", "ultramem-health-probe"}   # deploy/docker's own


def check_argv(where, argv, contract_flags):
    for prog, flags in program_and_flags(argv):
        if prog in OWN_PROGRAMS:
            continue
        if prog not in contract_flags:
            problem("%s: program %s is not in docs/PROCESSES.md" % (where, prog))
            continue
        for f in flags:
            if f not in contract_flags[prog]:
                problem("%s: %s flag %s is not in docs/PROCESSES.md" % (where, prog, f))


def flag_value(argv, flag):
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


# ---------------------------------------------------------------- shard maps
def parse_shard_map(path):
    text = re.sub(r"#.*", "", open(path).read())
    m = re.search(r'\bmodel_id:\s*"([^"]*)"', text)
    shards = []
    for sm in re.finditer(r"shards\s*\{((?:[^{}]|\{[^{}]*\})*)\}", text):
        body = sm.group(1)
        blocks = []
        for bm in re.finditer(r"block\s*\{([^{}]*)\}", body):
            b = bm.group(1)
            get = lambda k: int(re.search(r"\b%s:\s*(\d+)" % k, b).group(1)) if re.search(r"\b%s:" % k, b) else 0
            if re.search(r"\b(layers|col_begin|col_end):", b):
                problem("%s: the check only understands all-layer, all-column blocks" % path)
            blocks.append((get("row_begin"), get("row_end")))
        replicas = re.findall(r'replicas:\s*"([^"]*)"', body)
        name = re.search(r'name:\s*"([^"]*)"', body)
        shards.append({"name": name.group(1) if name else "", "blocks": blocks, "replicas": replicas})
    return (m.group(1) if m else None), shards


def check_tiling(path, shards, n_rows):
    ranges = sorted((b if b[1] else (b[0], n_rows)) for s in shards for b in s["blocks"])
    pos = 0
    for b, e in ranges:
        if b != pos or e <= b:
            problem("%s: row blocks %s do not tile [0, %d)" % (path, ranges, n_rows))
            return
        pos = e
    if pos != n_rows:
        problem("%s: row blocks %s do not tile [0, %d)" % (path, ranges, n_rows))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=".")
    ap.add_argument("--k8s", action="append", default=[], help="rendered manifests (kubectl kustomize)")
    args = ap.parse_args()
    repo = args.repo
    metrics, contract_flags = read_contract(os.path.join(repo, "docs/PROCESSES.md"))
    if len(metrics) < 20 or "ultramem-gateway" not in contract_flags:
        problem("docs/PROCESSES.md: could not read the metric and flag lists")

    # metrics
    n = 0
    dashboards = sorted(glob.glob(os.path.join(repo, "deploy/grafana/dashboards/*.json")))
    if not dashboards:
        problem("no dashboard in deploy/grafana/dashboards")
    for d in dashboards:
        exprs = dashboard_exprs(d)
        if not exprs:
            problem("%s: no queries" % d)
        n += check_exprs(d, exprs, metrics)
    rules = sorted(f for f in glob.glob(os.path.join(repo, "deploy/prometheus/alerts*.yml"))
                   if not f.endswith("_test.yml"))
    if not rules:
        problem("no alert rules in deploy/prometheus")
    for r in rules:
        n += check_exprs(r, alert_exprs(r), metrics)
    print("metric references checked: %d in %d dashboards and %d rule files" % (n, len(dashboards), len(rules)))

    # flags: compose
    compose = yaml.safe_load(open(os.path.join(repo, "docker-compose.yml")))
    services = compose["services"]
    memory_listen = {}
    metrics_ports = {}
    model_ids = set()
    for name, svc in services.items():
        cmd = svc.get("command") or []
        if isinstance(cmd, str):
            cmd = shlex.split(cmd)
        check_argv("docker-compose.yml service %s" % name, cmd, contract_flags)
        for prog, _ in program_and_flags(cmd):
            if prog == "ultramem-memory-server" or prog == "ultramem-memory-init":
                listen = flag_value(cmd, "--listen")
                if listen:
                    memory_listen[name] = listen.rsplit(":", 1)[1]
                env = svc.get("environment") or {}
                if isinstance(env, dict) and env.get("ULTRAMEM_MODEL_ID"):
                    model_ids.add(("compose", str(env["ULTRAMEM_MODEL_ID"])))
        ml = flag_value(cmd, "--metrics-listen")
        if ml:
            metrics_ports[name] = ml.rsplit(":", 1)[1]
    # flags: ultramem-import in memory-init.sh
    script = open(os.path.join(repo, "deploy/docker/memory-init.sh")).read()
    m = re.search(r"^\s*ultramem-import (.*?)(?<!\\)\n", script.replace("\\\n", " "), re.M | re.S)
    if not m:
        problem("deploy/docker/memory-init.sh: no ultramem-import command found")
    else:
        check_argv("deploy/docker/memory-init.sh", ["ultramem-import"] + m.group(1).split(), contract_flags)
    default_id = re.search(r"ULTRAMEM_MODEL_ID:-([^}]*)\}", script)
    if default_id:
        model_ids.add(("memory-init.sh default", default_id.group(1)))

    # flags: kubernetes
    k8s_objects = []
    for path in args.k8s:
        for obj in yaml.safe_load_all(open(path)):
            if obj:
                k8s_objects.append((path, obj))
    memory_sts = None
    for path, obj in k8s_objects:
        spec = obj.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        if obj["kind"] == "StatefulSet" and obj["metadata"]["name"] == "ultramem-memory":
            memory_sts = obj
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            argv = list(c.get("command") or []) + list(c.get("args") or [])
            check_argv("%s %s/%s container %s" % (path, obj["kind"], obj["metadata"]["name"], c["name"]),
                       argv, contract_flags)
            for e in c.get("env", []):
                if e.get("name") == "ULTRAMEM_MODEL_ID":
                    model_ids.add(("k8s", e.get("value")))

    # shard maps and the model
    config = json.load(open(os.path.join(repo, "models/ultramem-tiny/config.json")))
    n_rows = config["memory"]["knum"] ** 2
    maps = {"compose": os.path.join(repo, "deploy/config/shard_map.pbtxt"),
            "k8s": os.path.join(repo, "deploy/k8s/base/shard_map.pbtxt")}
    for kind, path in maps.items():
        model_id, shards = parse_shard_map(path)
        if not shards:
            problem("%s: no shards" % path)
            continue
        check_tiling(path, shards, n_rows)
        for src, mid in sorted(model_ids):
            if mid != model_id:
                problem("%s: model_id %r but %s imports with --model-id %r" % (path, model_id, src, mid))
        for i, s in enumerate(shards):
            want = (i * n_rows // len(shards), (i + 1) * n_rows // len(shards))
            if s["blocks"] != [want]:
                problem("%s: shard %d has blocks %s, memory-init.sh imports rows %s" % (path, i, s["blocks"], want))
            if not s["replicas"]:
                problem("%s: shard %s has no replica" % (path, s["name"]))
        if kind == "compose":
            for i, s in enumerate(shards):
                for r in s["replicas"]:
                    host, port = r.rsplit(":", 1)
                    svc = services.get(host)
                    if svc is None:
                        problem("%s: replica %s: no compose service %s" % (path, r, host))
                        continue
                    if memory_listen.get(host) != port:
                        problem("%s: replica %s: service %s listens on port %s" % (path, r, host, memory_listen.get(host)))
                    env = svc.get("environment") or {}
                    if str(env.get("ULTRAMEM_SHARD_INDEX")) != str(i) or str(env.get("ULTRAMEM_SHARD_COUNT")) != str(len(shards)):
                        problem("%s: replica %s serves shard %d of %d, but service %s imports shard %s of %s" % (
                            path, r, i, len(shards), host, env.get("ULTRAMEM_SHARD_INDEX"), env.get("ULTRAMEM_SHARD_COUNT")))
        else:
            if memory_sts is None:
                if args.k8s:
                    problem("rendered manifests have no StatefulSet ultramem-memory")
                continue
            reps = memory_sts["spec"]["replicas"]
            svc_name = memory_sts["spec"]["serviceName"]
            ns = memory_sts["metadata"].get("namespace", "default")
            init_env = {e["name"]: e.get("value") for c in memory_sts["spec"]["template"]["spec"].get("initContainers", [])
                        for e in c.get("env", [])}
            if reps != len(shards) or str(init_env.get("ULTRAMEM_SHARD_COUNT")) != str(len(shards)):
                problem("%s: %d shards, StatefulSet has %s replicas and ULTRAMEM_SHARD_COUNT %s" % (
                    path, len(shards), reps, init_env.get("ULTRAMEM_SHARD_COUNT")))
            ports = [c["containerPort"] for c in memory_sts["spec"]["template"]["spec"]["containers"][0]["ports"]]
            for i, s in enumerate(shards):
                for r in s["replicas"]:
                    want = "ultramem-memory-%d.%s.%s.svc.cluster.local" % (i, svc_name, ns)
                    host, port = r.rsplit(":", 1)
                    if host != want or int(port) not in ports:
                        problem("%s: replica %s of shard %d is not pod %s:%s" % (path, r, i, want, ports))

    # prometheus static targets = compose metrics ports
    prom = yaml.safe_load(open(os.path.join(repo, "deploy/prometheus/prometheus.yml")))
    scraped = set()
    for job in prom["scrape_configs"]:
        for sc in job.get("static_configs", []):
            for t in sc["targets"]:
                host, port = t.rsplit(":", 1)
                if host in services:
                    scraped.add(host)
                    if metrics_ports.get(host) != port:
                        problem("prometheus.yml: target %s, but service %s serves metrics on %s" % (t, host, metrics_ports.get(host)))
    for name in metrics_ports:
        if name not in scraped:
            problem("prometheus.yml: compose service %s (metrics port %s) is not scraped" % (name, metrics_ports[name]))
    # every scraped workload of kubernetes has the annotations
    for path, obj in k8s_objects:
        tmpl = obj.get("spec", {}).get("template")
        if obj["kind"] in ("Deployment", "StatefulSet") and tmpl:
            ann = tmpl.get("metadata", {}).get("annotations", {})
            cports = [p["containerPort"] for c in tmpl["spec"]["containers"] for p in c.get("ports", []) if p.get("name") == "metrics"]
            if ann.get("prometheus.io/scrape") != "true" or [int(ann.get("prometheus.io/port", 0))] != cports:
                problem("%s: %s %s: prometheus.io annotations %s do not match its metrics port %s" % (
                    path, obj["kind"], obj["metadata"]["name"], ann, cports))

    if problems:
        print("check_names: %d problem(s)" % len(problems))
        sys.exit(1)
    print("check_names: OK")


if __name__ == "__main__":
    main()
