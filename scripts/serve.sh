#!/usr/bin/env bash
# Starts the local UltraMem Serve cluster: two memory servers (the model's value tables split by
# rows), a compute node using them, and the chat gateway. Prints the endpoint and keeps serving
# until Ctrl-C, then stops everything it started.
#
#   scripts/serve.sh [--model DIR] [--no-build]
#
# Environment: UM_BUILD_DIR (build), UM_STATE_DIR (var/serve: stores, logs, shard map),
# UM_GATEWAY_PORT (7000), UM_COMPUTE_PORT (7100), UM_MEMORY_PORTS (7070,7071),
# UM_METRICS_PORTS (gateway,compute,memory-0,memory-1: 9000,9100,9470,9471),
# UM_COMPUTE_ARGS (extra compute-node flags, e.g. "--backend cuda"),
# ULTRAMEM_AUTH_TOKEN (when set, the gateway requires "authorization: Bearer <token>").
# A port of 0 lets the process pick one; the line "ENDPOINTS ..." printed before "READY" gives
# every address and metrics port actually bound (tests start the cluster that way).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODEL=models/ultramem-tiny
BUILD_STEP=1
while (($#)); do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --no-build) BUILD_STEP=0; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "serve.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
BUILD=${UM_BUILD_DIR:-build}
STATE=${UM_STATE_DIR:-var/serve}
GATEWAY_PORT=${UM_GATEWAY_PORT:-7000}
COMPUTE_PORT=${UM_COMPUTE_PORT:-7100}
IFS=, read -r -a MEMORY_PORTS <<<"${UM_MEMORY_PORTS:-7070,7071}"
IFS=, read -r GATEWAY_METRICS COMPUTE_METRICS MEMORY_METRICS_0 MEMORY_METRICS_1 <<<"${UM_METRICS_PORTS:-9000,9100,9470,9471}"
MEMORY_METRICS=("$MEMORY_METRICS_0" "$MEMORY_METRICS_1")

if ((BUILD_STEP)); then
  scripts/install-deps.sh
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  ninja -C "$BUILD" ultramem-import ultramem-memory-server ultramem-compute-node ultramem-gateway ultramem-chat
fi
BIN=$ROOT/$BUILD/bin
mkdir -p "$STATE/logs"

pids=()
stop_all() {
  trap - INT TERM EXIT
  if ((${#pids[@]})); then
    echo "stopping ${#pids[@]} processes"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# Waits until a process's log shows SERVING; fails if the process dies first.
wait_serving() {
  local pid=$1 log=$2 name=$3
  for _ in $(seq 1 600); do
    grep -q '^SERVING' "$log" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { echo "$name exited; its log ($log):" >&2; tail -20 "$log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$name not serving after 60 s ($log)" >&2
  exit 1
}

# The first gRPC address and the metrics port a process printed in its LISTENING line.
bound_address() { sed -n 's/^LISTENING grpc=\([^, ]*\).*/\1/p' "$1" | head -1; }
bound_metrics() { sed -n 's/^LISTENING .*metrics=\([0-9]*\).*/\1/p' "$1" | head -1; }

# The model id is the directory's name (as docker-compose and Kubernetes import it; the compute
# node also checks every store's dimensions). The store version names the model's files (config
# and the safetensors' sizes and times), so a changed model is imported afresh beside the old one.
read -r N MODEL_ID VERSION < <("${PYTHON:-/usr/bin/python3}" - "$MODEL" <<'PY'
import hashlib, json, os, sys
d = os.path.abspath(sys.argv[1])
raw = open(os.path.join(d, "config.json"), "rb").read()
h = hashlib.sha256(raw)
for name in sorted(os.listdir(d)):
    if ".safetensors" in name:
        st = os.stat(os.path.join(d, name))
        h.update(("%s %d %d;" % (name, st.st_size, st.st_mtime_ns)).encode())
print(json.loads(raw)["memory"]["knum"] ** 2, os.path.basename(d), "m-" + h.hexdigest()[:12])
PY
)
HALF=$((N / 2))
ranges=("0:$HALF" "$HALF:$N")
shard_map=$STATE/shard_map.pbtxt
{
  echo "# Written by scripts/serve.sh for $MODEL"
  echo "model_id: \"$MODEL_ID\""
} >"$shard_map"
for i in 0 1; do
  store=$STATE/memory-$i
  echo "== memory shard $i: rows ${ranges[$i]} of $MODEL -> $store"
  "$BIN/ultramem-import" --checkpoint "$MODEL" --store-dir "$store" --version "$VERSION" \
    --model-id "$MODEL_ID" --rows "${ranges[$i]}" --progress off >"$STATE/logs/import-$i.log" 2>&1 ||
    { tail -20 "$STATE/logs/import-$i.log" >&2; exit 1; }
  log=$STATE/logs/memory-$i.log
  "$BIN/ultramem-memory-server" --store-dir "$store" --listen "127.0.0.1:${MEMORY_PORTS[$i]}" \
    --metrics-listen "127.0.0.1:${MEMORY_METRICS[$i]}" >"$log" 2>&1 &
  pids+=($!)
  wait_serving $! "$log" "memory server $i"
  MEMORY_ADDR[$i]=$(bound_address "$log")
  MEMORY_METRICS[$i]=$(bound_metrics "$log")
  cat >>"$shard_map" <<MAP
shards {
  name: "memory-$i"
  block { row_begin: ${ranges[$i]%:*} row_end: ${ranges[$i]#*:} }
  replicas: "${MEMORY_ADDR[$i]}"
}
MAP
done

echo "== compute node"
log=$STATE/logs/compute.log
# shellcheck disable=SC2086
"$BIN/ultramem-compute-node" --model "$MODEL" --shard-map "$shard_map" ${UM_COMPUTE_ARGS:-} \
  --listen "127.0.0.1:$COMPUTE_PORT" --metrics-listen "127.0.0.1:$COMPUTE_METRICS" >"$log" 2>&1 &
pids+=($!)
wait_serving $! "$log" "compute node"
COMPUTE_ADDR=$(bound_address "$log")
COMPUTE_METRICS=$(bound_metrics "$log")

echo "== gateway"
log=$STATE/logs/gateway.log
"$BIN/ultramem-gateway" --backends "$COMPUTE_ADDR" --listen "127.0.0.1:$GATEWAY_PORT" \
  --metrics-listen "127.0.0.1:$GATEWAY_METRICS" >"$log" 2>&1 &
pids+=($!)
wait_serving $! "$log" "gateway"
GATEWAY_ADDR=$(bound_address "$log")
GATEWAY_METRICS=$(bound_metrics "$log")

auth=""
[ -n "${ULTRAMEM_AUTH_TOKEN:-}" ] && auth=" -H 'authorization: Bearer \$ULTRAMEM_AUTH_TOKEN'"
cat <<EOF

UltraMem Serve is up: chat endpoint $GATEWAY_ADDR (gRPC, ultramem.v1.ChatService)
  model $MODEL (id $MODEL_ID, store version $VERSION), memory servers ${MEMORY_ADDR[0]} ${MEMORY_ADDR[1]}, compute node $COMPUTE_ADDR
  metrics: gateway :$GATEWAY_METRICS, compute node :$COMPUTE_METRICS, memory :${MEMORY_METRICS[0]},${MEMORY_METRICS[1]}   logs: $STATE/logs/

Try:
  $BUILD/bin/ultramem-chat --endpoint $GATEWAY_ADDR "And God said"
  grpcurl -plaintext$auth -d '{"messages":[{"role":"ROLE_USER","content":"And God said"}]}' $GATEWAY_ADDR ultramem.v1.ChatService/Chat

Ctrl-C stops everything.
ENDPOINTS gateway=$GATEWAY_ADDR compute=$COMPUTE_ADDR memory=${MEMORY_ADDR[0]},${MEMORY_ADDR[1]} metrics=$GATEWAY_METRICS,$COMPUTE_METRICS,${MEMORY_METRICS[0]},${MEMORY_METRICS[1]}
READY
EOF
wait -n "${pids[@]}" || true
echo "a process exited; stopping the cluster" >&2
exit 1
