#!/usr/bin/env bash
# Offline checks of the deployment files (issue 5, item 6): none of it can run here (no Docker engine,
# no cluster), so this checks everything short of running it.
#
#   tests/deploy_check.sh [--build BUILD_DIR]
#
#  1. docker-compose config -q   (docker-compose.yml, and with deploy/docker/compose.gpu.yml)
#  2. kubectl kustomize of every overlay in deploy/k8s/overlays, every rendered object validated
#     against the Kubernetes schemas (npm kubernetes-models, deploy/tests/validate.mjs)
#  3. promtool check config (deploy/prometheus/prometheus*.yml) and promtool check rules (alerts)
#  4. deploy/tests/check_names.py: every metric of every dashboard query and alert expression, and
#     every flag of every ultramem-* program in compose, Kubernetes and memory-init.sh, is in
#     docs/PROCESSES.md; shard maps tile the model's rows and match the services/pods; Prometheus
#     targets match the compose metrics ports; the dashboard JSON is the one make_dashboard.py writes
#  5. with --build DIR holding ultramem-import, ultramem-memory-server and ultramem-generate: the two
#     shards imported by deploy/docker/memory-init.sh and served by real memory servers, checked
#     with ultramem-health-probe (built from deploy/docker) and a greedy generation through the
#     compose shard map (hosts rewritten to loopback) equal to the in-process one
#
# Installs what it needs when missing (Debian 12): docker-compose, python3-yaml, nodejs/npm via
# apt-get, and deploy/tests/node_modules via `npm ci`. Exits non-zero on any problem. Only these
# are SKIPPED (loudly) with exit 0: the schema validation when the npm registry cannot be reached
# to install kubernetes-models, the kustomize checks when no kubectl is installed (Debian has no
# recent one), and check 5 without a build. DEPLOY_CHECK_STRICT=1 turns every skip into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
BUILD_DIR=""
while (($#)); do
  case "$1" in
    --build) BUILD_DIR=$(cd "$2" && pwd); shift 2 ;;
    *) echo "usage: $0 [--build BUILD_DIR]" >&2; exit 2 ;;
  esac
done

TMP=$(mktemp -d /tmp/deploy_check.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

FAILED=()
SKIPPED=()
step() { echo; echo "=== $*"; }
fail() { echo "!!!!!!!! FAILED: $*" >&2; FAILED+=("$*"); }
pass() { echo "ok: $*"; }
skip() {
  echo "######################################################################"
  echo "### SKIPPED: $*"
  echo "######################################################################"
  SKIPPED+=("$*")
}
run_check() {  # run_check NAME CMD...: runs CMD, records a failure with its output
  local name=$1; shift
  if "$@" >"$TMP/out" 2>&1; then
    echo "ok: $name"
    [ -s "$TMP/out" ] && sed 's/^/    /' "$TMP/out" | tail -20
    return 0
  fi
  sed 's/^/    /' "$TMP/out"
  fail "$name"
  return 1
}

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
APT_UPDATED=0
apt_install() {  # apt_install PACKAGE...
  echo "== installing: $*"
  if ((!APT_UPDATED)); then $SUDO apt-get update -qq || true; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

step "tools"
command -v docker-compose >/dev/null || apt_install docker-compose
python3 -c "import yaml" 2>/dev/null || apt_install python3-yaml
command -v promtool >/dev/null || apt_install prometheus
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then apt_install nodejs npm || true; fi
echo "docker-compose $(docker-compose version --short 2>/dev/null || echo '?'), $(promtool --version 2>&1 | head -1)"
echo "node $(node --version 2>/dev/null || echo none), npm $(npm --version 2>/dev/null || echo none)"
KUBECTL=""
if command -v kubectl >/dev/null; then
  KUBECTL=kubectl
  kubectl version --client 2>/dev/null | sed 's/^/    /' || true
fi

# ------------------------------------------------------------------ 1. compose
step "1. docker-compose config"
run_check "docker-compose config -q (docker-compose.yml)" docker-compose -f docker-compose.yml config -q || true
run_check "docker-compose config -q (+ deploy/docker/compose.gpu.yml)" \
  docker-compose -f docker-compose.yml -f deploy/docker/compose.gpu.yml config -q || true
if docker-compose -f docker-compose.yml config >"$TMP/compose.yaml" 2>"$TMP/compose.err"; then
  for svc in memory-0 memory-1 compute gateway prometheus grafana; do
    grep -q "^  $svc:" "$TMP/compose.yaml" || fail "docker-compose.yml has no service $svc"
  done
fi
# A GPU deployment must run the engine on the GPU, not only reserve one (the default is cpu).
gpu_backend() {  # rendered YAML: prints the args after ultramem-compute-node's --backend
  /usr/bin/python3 - "$1" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if not doc:
        continue
    containers = []
    if doc.get("services"):  # compose
        containers = [s for s in doc["services"].values()]
        argv_of = lambda c: (c.get("command") or [])
    else:  # kubernetes
        spec = (((doc.get("spec") or {}).get("template") or {}).get("spec") or {})
        containers = spec.get("containers") or []
        argv_of = lambda c: (c.get("command") or []) + (c.get("args") or [])
    for c in containers:
        argv = argv_of(c)
        if "ultramem-compute-node" in argv and "--backend" in argv:
            print(argv[argv.index("--backend") + 1])
PY
}
if docker-compose -f docker-compose.yml -f deploy/docker/compose.gpu.yml config >"$TMP/compose-gpu.yaml" 2>/dev/null; then
  [ "$(gpu_backend "$TMP/compose-gpu.yaml")" = cuda ] && pass "compose.gpu.yml runs the compute node with --backend cuda" \
    || fail "compose.gpu.yml: the compute node does not run with --backend cuda"
fi

# ------------------------------------------------------------------ 2. kubernetes
step "2. kubectl kustomize + schema validation"
RENDERED=()
if [ -z "$KUBECTL" ]; then
  skip "kubectl not installed: the Kubernetes manifests were neither rendered nor validated (install kubectl >= 1.21 from https://kubernetes.io/docs/tasks/tools/; Debian 12's kubernetes-client 1.20 is too old)"
else
  for overlay in deploy/k8s/overlays/*/; do
    name=$(basename "$overlay")
    if run_check "kubectl kustomize $overlay" kubectl kustomize "$overlay"; then
      kubectl kustomize "$overlay" >"$TMP/k8s-$name.yaml"
      RENDERED+=("$TMP/k8s-$name.yaml")
    fi
  done
  ((${#RENDERED[@]})) || fail "no overlay rendered"
  if [ -f "$TMP/k8s-gpu.yaml" ]; then
    [ "$(gpu_backend "$TMP/k8s-gpu.yaml")" = cuda ] && pass "overlays/gpu runs the compute node with --backend cuda" \
      || fail "overlays/gpu: the compute node does not run with --backend cuda"
  fi
  NODE_OK=1
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    skip "node/npm not installed and not installable: rendered manifests NOT validated against the Kubernetes schemas"
    NODE_OK=0
  elif [ ! -d deploy/tests/node_modules/kubernetes-models ] || [ ! -d deploy/tests/node_modules/yaml ]; then
    echo "== npm ci in deploy/tests"
    if ! (cd deploy/tests && timeout 300 npm ci --no-audit --no-fund --loglevel=error) >"$TMP/npm.log" 2>&1; then
      cat "$TMP/npm.log"
      if (cd deploy/tests && timeout 30 npm ping) >/dev/null 2>&1; then
        fail "npm ci in deploy/tests (the registry answers)"
      else
        skip "npm registry unreachable: kubernetes-models could not be installed, rendered manifests NOT validated against the Kubernetes schemas"
      fi
      NODE_OK=0
    fi
  fi
  if ((NODE_OK)) && ((${#RENDERED[@]})); then
    run_check "kubernetes-models validation of ${#RENDERED[@]} rendered overlays" \
      node deploy/tests/validate.mjs "${RENDERED[@]}" || true
  fi
fi

# ------------------------------------------------------------------ 3. promtool
step "3. promtool"
run_check "promtool check config deploy/prometheus/prometheus.yml" promtool check config deploy/prometheus/prometheus.yml || true
# Debian's promtool is built without Kubernetes service discovery: check prometheus-k8s.yml with
# its kubernetes_sd_configs replaced by an equivalent static target (everything else as written).
if promtool check config deploy/prometheus/prometheus-k8s.yml >"$TMP/k8sprom.out" 2>&1; then
  echo "ok: promtool check config deploy/prometheus/prometheus-k8s.yml"
elif grep -q "field kubernetes_sd_configs not found" "$TMP/k8sprom.out"; then
  echo "NOTE: this promtool has no Kubernetes service discovery (Debian build); checking prometheus-k8s.yml with kubernetes_sd_configs replaced by static_configs"
  python3 - deploy/prometheus/prometheus-k8s.yml "$TMP/prometheus-k8s-static.yml" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
for job in cfg["scrape_configs"]:
    if job.pop("kubernetes_sd_configs", None) is not None:
        job["static_configs"] = [{"targets": ["pod.example:9100"]}]
cfg["rule_files"] = []
yaml.safe_dump(cfg, open(sys.argv[2], "w"))
PY
  run_check "promtool check config prometheus-k8s.yml (static stand-in for kubernetes_sd_configs)" \
    promtool check config "$TMP/prometheus-k8s-static.yml" || true
else
  sed 's/^/    /' "$TMP/k8sprom.out"; fail "promtool check config deploy/prometheus/prometheus-k8s.yml"
fi
run_check "promtool check rules deploy/prometheus/alerts.yml" promtool check rules deploy/prometheus/alerts.yml || true
if [ -f deploy/prometheus/alerts_test.yml ]; then
  run_check "promtool test rules deploy/prometheus/alerts_test.yml" promtool test rules deploy/prometheus/alerts_test.yml || true
fi

# ------------------------------------------------------------------ 4. names
step "4. metric names, flags, shard maps against docs/PROCESSES.md"
k8s_args=()
for f in "${RENDERED[@]}"; do k8s_args+=(--k8s "$f"); done
run_check "deploy/tests/check_names.py" python3 deploy/tests/check_names.py --repo "$REPO" "${k8s_args[@]}" || true
cp deploy/grafana/dashboards/ultramem.json "$TMP/dashboard.before"
python3 deploy/grafana/make_dashboard.py >/dev/null
if ! cmp -s "$TMP/dashboard.before" deploy/grafana/dashboards/ultramem.json; then
  cp "$TMP/dashboard.before" deploy/grafana/dashboards/ultramem.json
  fail "deploy/grafana/dashboards/ultramem.json differs from what deploy/grafana/make_dashboard.py writes (run it)"
else
  echo "ok: dashboard JSON is make_dashboard.py's output"
fi
for f in deploy/docker/*.sh tests/deploy_check.sh; do
  run_check "sh -n / bash -n $f" bash -n "$f" || true
done

# ------------------------------------------------------------------ 5. live
step "5. memory-init.sh + shard map + health probe against the real binaries"
BIN=${BUILD_DIR:+$BUILD_DIR/bin}
if [ -z "$BIN" ] || [ ! -x "$BIN/ultramem-import" ] || [ ! -x "$BIN/ultramem-memory-server" ] || [ ! -x "$BIN/ultramem-generate" ]; then
  skip "no --build DIR with ultramem-import, ultramem-memory-server and ultramem-generate: live check not run"
else
  live() {
    local probe_dir="$BUILD_DIR/deploy-check" probe ports=() i
    probe="$probe_dir/ultramem-health-probe"
    if [ ! -x "$probe" ] || [ "$REPO/deploy/docker/health_probe.cc" -nt "$probe" ]; then
      echo "== building ultramem-health-probe"
      "$REPO/deploy/docker/build_health_probe.sh" "$probe_dir" || { echo "health probe does not build"; return 1; }
    fi
    read -r -a ports < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
    "$probe" --timeout-ms=500 "127.0.0.1:${ports[0]}" && { echo "probe says SERVING with no server"; return 1; }
    for i in 0 1; do
      PATH="$BIN:$PATH" HOSTNAME="ultramem-memory-$i" ULTRAMEM_SHARD_COUNT=2 ULTRAMEM_MODEL_DIR="$REPO/models/ultramem-tiny" \
        ULTRAMEM_STORE_DIR="$TMP/store-$i" "$REPO/deploy/docker/memory-init.sh" || return 1
      # the second run must find the store and not import again
      PATH="$BIN:$PATH" HOSTNAME="ultramem-memory-$i" ULTRAMEM_MODEL_DIR="$REPO/models/ultramem-tiny" \
        ULTRAMEM_STORE_DIR="$TMP/store-$i" "$REPO/deploy/docker/memory-init.sh" | grep -q "no import" || return 1
      "$BIN/ultramem-memory-server" --store-dir "$TMP/store-$i" --listen "127.0.0.1:${ports[$i]}" \
        --metrics-listen "127.0.0.1:${ports[$((i + 2))]}" --hot-capacity-bytes 67108864 >"$TMP/ms-$i.log" 2>&1 &
      PIDS+=($!)
    done
    for i in 0 1; do
      local ok=0 t
      for t in $(seq 1 100); do
        if "$probe" --timeout-ms=500 "127.0.0.1:${ports[$i]}" >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
      done
      ((ok)) || { echo "memory server $i never SERVING:"; cat "$TMP/ms-$i.log"; return 1; }
      echo "memory server $i SERVING (ultramem-health-probe)"
    done
    sed -e "s/\"memory-0:7070\"/\"127.0.0.1:${ports[0]}\"/" -e "s/\"memory-1:7071\"/\"127.0.0.1:${ports[1]}\"/" \
      "$REPO/deploy/config/shard_map.pbtxt" >"$TMP/shard_map.pbtxt"
    local prompt="The memory server" want got
    want=$("$BIN/ultramem-generate" --model "$REPO/models/ultramem-tiny" --prompt "$prompt" --max-tokens 24 --stats=false) || return 1
    got=$("$BIN/ultramem-generate" --model "$REPO/models/ultramem-tiny" --shard-map "$TMP/shard_map.pbtxt" \
      --prompt "$prompt" --max-tokens 24 --stats=false) || return 1
    echo "in-process:  $want"
    echo "shard map:   $got"
    [ "$want" = "$got" ] || { echo "greedy text through the compose shard map differs"; return 1; }
  }
  run_check "live: memory-init.sh imports, servers SERVING, generation through shard_map.pbtxt" live || true
fi

# ------------------------------------------------------------------ summary
echo
if ((${#SKIPPED[@]})); then
  echo "######## ${#SKIPPED[@]} SKIPPED:"
  printf '########   %s\n' "${SKIPPED[@]}"
fi
if ((${#FAILED[@]})); then
  echo "!!!!!!!! deploy_check FAILED (${#FAILED[@]}):" >&2
  printf '!!!!!!!!   %s\n' "${FAILED[@]}" >&2
  exit 1
fi
if ((${#SKIPPED[@]})) && [ "${DEPLOY_CHECK_STRICT:-0}" = 1 ]; then
  echo "!!!!!!!! deploy_check: skips are failures with DEPLOY_CHECK_STRICT=1" >&2
  exit 1
fi
echo "deploy_check: OK"
