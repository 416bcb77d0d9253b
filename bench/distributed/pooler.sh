#!/usr/bin/env bash
# The remote pooler's round trip on this machine (ultramem-bench-pooler): one shard and two shards,
# memory servers with the host tier and with the GPU tier (--device cuda, when a GPU is there),
# 1 and 64 tokens, unix: sockets. Small model (D 256, memory layers as bench/gpu/h200_model.json
# with knum 128). BIN: the folder holding ultramem-{make-checkpoint,import,memory-server,bench-pooler}.
#   BIN=build/bin bash bench/distributed/pooler.sh
set -euo pipefail
BIN=${BIN:-.device/bin}
W=$(mktemp -d /tmp/um_pooler_XXXXXX)
pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done; pids=(); }
trap 'stop; rm -rf "$W"' EXIT
python3 - "$W/cfg.json" <<'PY'
import json, sys
c = json.load(open("bench/gpu/h200_model.json"))
c.update(vocab_size=300, hidden_size=256, num_attention_heads=4, num_key_value_heads=4, head_dim=64,
         intermediate_size=512)
c["memory"]["knum"] = 128
json.dump(c, open(sys.argv[1], "w"))
PY
"$BIN/ultramem-make-checkpoint" --config "$W/cfg.json" --out "$W/model" --dtype BF16 2>/dev/null
N=$((128 * 128)); H=$((N / 2))
for spec in "all 0:$N" "a 0:$H" "b $H:$N"; do
  set -- $spec
  "$BIN/ultramem-import" --checkpoint "$W/model" --store-dir "$W/s-$1" --version v1 --model-id pooler \
    --rows "$2" --progress off 2>/dev/null
done
printf 'model_id: "pooler"\nshards { name: "all" block { row_begin: 0 row_end: %d } replicas: "unix:%s/all.sock" }\n' $N "$W" > "$W/map1"
printf 'model_id: "pooler"\nshards { name: "a" block { row_begin: 0 row_end: %d } replicas: "unix:%s/a.sock" }\nshards { name: "b" block { row_begin: %d row_end: %d } replicas: "unix:%s/b.sock" }\n' $H "$W" $H $N "$W" > "$W/map2"
devices=(cpu)
command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && devices+=(cuda)
echo "| memory tier | shards | tokens | pooler p50 µs | p99 | sync stub p50 µs (one shard) | hedges |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for dev in "${devices[@]}"; do
  for s in all a b; do
    rm -f "$W/$s.sock"
    "$BIN/ultramem-memory-server" --store-dir "$W/s-$s" --listen "unix:$W/$s.sock" --metrics-listen "" \
      --device "$dev" > "$W/$s.log" 2>&1 &
    pids+=($!)
  done
  for s in all a b; do
    for _ in $(seq 1 300); do grep -q '^SERVING' "$W/$s.log" && break; sleep 0.1; done
    grep -q '^SERVING' "$W/$s.log" || { cat "$W/$s.log"; exit 1; }
  done
  for map in map1 map2; do
    for t in 1 64; do
      j=$("$BIN/ultramem-bench-pooler" --model "$W/model" --shard_map "$W/$map" --tokens $t --calls 2000)
      python3 -c 'import json,sys; d=json.loads(sys.argv[2]); print("| %s | %d | %d | %.0f | %.0f | %.0f | %d |" % (sys.argv[1], d["shards"], d["tokens"], d["pooler_p50_us"], d["pooler_p99_us"], d["sync_one_shard_p50_us"], d["hedges"]))' "$dev" "$j"
    done
  done
  stop
done
