#!/usr/bin/env bash
# Issue 6 (d) on the GPU machine, one call: the CUDA engine with its memory layers on two memory
# servers (separate processes; unix: sockets and loopback TCP; their hot tier on the host
# (--device cpu) and in GPU memory (--device cuda), on a GPU of their own when the machine has
# two or more) against the CUDA engine in-process, at batch 1 and 64; plus the GPU tests. Expects the bundle made by:
#   ../shared/tools/device-bundle .device build-cuda/bin/{ultramem-bench-decode,ultramem-make-checkpoint,ultramem-import,ultramem-memory-server,cuda_engine_tests}
# and is run as: bash bench/gpu/distributed.sh   (with carry [".device"])
set -euo pipefail
export LD_LIBRARY_PATH=$PWD/.device/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
B=$PWD/.device/bin
W=$(mktemp -d /tmp/um_gpu_dist_XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

echo "== GPU tests"
"$B/cuda_engine_tests" 2>&1 | grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) +\]|tests ran|FAILED TEST" | tail -40 || true

echo "== model: the issue's dense shape (D 1024, 12 blocks, 16x64 heads, 4 kv heads, SwiGLU 2816, V 32000),"
echo "   4 memory layers E 4 Dk 256 Dv 512 H 2 m 32, knum 256 (64Ki rows per layer: RocksDB import fits the call)"
python3 - "$W/config.json" <<'PY'
import json, sys
c = json.load(open("bench/gpu/h200_model.json"))
c["memory"]["knum"] = 256
json.dump(c, open(sys.argv[1], "w"))
PY
t0=$(date +%s.%N)
"$B/ultramem-make-checkpoint" --config "$W/config.json" --out "$W/model" --dtype BF16 --scale 0.02
N=$((256 * 256)); H=$((N / 2))
for i in 0 1; do
  rows=$([ $i = 0 ] && echo "0:$H" || echo "$H:$N")
  "$B/ultramem-import" --checkpoint "$W/model" --store-dir "$W/store-$i" --version v1 --model-id gpu-dist \
    --rows "$rows" --progress off 2>&1 | tail -1
done
echo "prepared in $(python3 -c "import time; print(round(time.time() - $t0, 1))") s"
G=$(nvidia-smi -L | wc -l)
MEM_GPU=$(( G > 1 ? 1 : 0 ))  # the memory servers' GPU tier: a GPU of their own where there is one
start_servers() {  # tier
  pids=()
  for i in 0 1; do
    rm -f "$W/mem-$i.sock"
    CUDA_VISIBLE_DEVICES=$MEM_GPU "$B/ultramem-memory-server" --store-dir "$W/store-$i" \
      --listen "unix:$W/mem-$i.sock,127.0.0.1:$((7170 + i))" --metrics-listen "" --cold-threads 4 \
      --device "$1" > "$W/mem-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in 0 1; do
    for _ in $(seq 1 600); do grep -q '^SERVING' "$W/mem-$i.log" && break; sleep 0.1; done
    grep -q '^SERVING' "$W/mem-$i.log" || { cat "$W/mem-$i.log"; exit 1; }
  done
}
stop_servers() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; pids=(); }
for kind in unix tcp; do
  {
    echo 'model_id: "gpu-dist"'
    for i in 0 1; do
      if [ $kind = unix ]; then addr="unix:$W/mem-$i.sock"; else addr="127.0.0.1:$((7170 + i))"; fi
      lo=$([ $i = 0 ] && echo 0 || echo $H); hi=$([ $i = 0 ] && echo $H || echo $N)
      echo "shards { name: \"m$i\" block { row_begin: $lo row_end: $hi } replicas: \"$addr\" }"
    done
  } > "$W/map-$kind.pbtxt"
done
echo "compute node on GPU 0, memory servers on GPU $MEM_GPU ($G GPUs)"
printf "\n| memory tier | batch | in-process µs/step | unix: µs/step | ratio | TCP µs/step | ratio | hidden (unix) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
declare -A local_json
for batch in 1 64; do
  local_json[$batch]=$(CUDA_VISIBLE_DEVICES=0 "$B/ultramem-bench-decode" --model "$W/model" --backend cuda --batch $batch --prompt 512 --steps 32)
done
for tier in cpu cuda; do
  start_servers $tier
  for batch in 1 64; do
    run() { CUDA_VISIBLE_DEVICES=0 "$B/ultramem-bench-decode" --model "$W/model" --backend cuda --batch $batch --prompt 512 --steps 32 "$@"; }
    unix_json=$(run --shard-map "$W/map-unix.pbtxt")
    tcp_json=$(run --shard-map "$W/map-tcp.pbtxt")
    python3 - "$tier" "$batch" "${local_json[$batch]}" "$unix_json" "$tcp_json" <<'PY'
import json, sys
tier, b, l, u, t = sys.argv[1], sys.argv[2], *(json.loads(x) for x in sys.argv[3:])
print("| %s | %s | %.0f | %.0f | %.2f | %.0f | %.2f | %.0f%% |" % (tier, b, l["step_ms"] * 1e3, u["step_ms"] * 1e3,
      u["step_ms"] / l["step_ms"], t["step_ms"] * 1e3, t["step_ms"] / l["step_ms"], 100 * u["hidden_share"]))
PY
  done
  stop_servers
done
