#!/usr/bin/env bash
# Issue #8, the scale-out run, in one call on a machine of several GPUs (nvidia-h200-x4 here; any
# count works): a compute node (the CUDA engine, GPU 0) decoding while its memory layers live on
# memory-server processes that hold the value tables in GPU memory (--device cuda), one GPU each
# where there are enough GPUs, else several servers share the memory GPUs (round robin over GPUs
# 1..G-1). Value tables are synthetic (common/synthetic_values.h): each memory server fills its
# shard in place on its GPU from the seed, so 144 GiB of tables need no file. gRPC over unix:
# sockets.
#
#   model "fits"  (knum 3072, 4 layers: 36 GiB of bf16 values): in-process (tables on GPU 0) and
#                 1, 2, 4, 7 memory shards
#   model "large" (knum 6144, 4 layers: 144 GiB of values, more than one H200 holds): 2, 4, 7
#                 shards (and 1 shard with a partial GPU tier, misses computed, when UM_LARGE_ONE=1)
#
# Decode after a 512-token prompt at batch 1, 16, 64, 256: median step time, tokens/s, share of
# lookup time hidden behind the skipped blocks. Results: one JSON line per measurement in
# $OUT/scaleout.jsonl (plus the first server's log of each run in $OUT/servers.log: the device
# tool returns at most 8 files); bench/scaleout/plot.py draws tokens/s against shards.
#
# Bundle (built on the dev machine, carried as .device-pack/bundle.tar.xz):
#   ../shared/tools/device-bundle .device build-cuda/bin/{ultramem-bench-decode,ultramem-make-checkpoint,ultramem-import,ultramem-memory-server}
# Run there: mkdir -p .device && tar -xJf .device-pack/bundle.tar.xz -C .device && bash bench/scaleout/run.sh
set -euo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export LD_LIBRARY_PATH=$PWD/.device/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
B=${UM_BIN:-$PWD/.device/bin}
OUT=${OUT:-$(mktemp -d)}
W=$(mktemp -d /tmp/um_scaleout_XXXXXX)
mkdir -p "$OUT"
RESULTS=$OUT/scaleout.jsonl
: > "$RESULTS"
BATCHES=${UM_BATCHES:-1,16,64,256}
PROMPT=${UM_PROMPT:-512}
KNUM_FITS=${UM_KNUM_FITS:-3072}
KNUM_LARGE=${UM_KNUM_LARGE:-6144}
BACKEND=${UM_BACKEND:-cuda}       # cpu for a dry run of this script on a machine without a GPU
MEM_DEVICE=${UM_MEM_DEVICE:-cuda}
SHARDS_FITS=${UM_SHARDS_FITS:-1 2 4 7}
SHARDS_LARGE=${UM_SHARDS_LARGE:-2 4 7}
[ "${UM_LARGE_ONE:-0}" = 1 ] && SHARDS_LARGE="1 $SHARDS_LARGE"
SKIP_FITS=${UM_SKIP_FITS:-0}    # 1: only the 144 GiB model (a short run: UM_SHARDS_LARGE=3 on x4)
pids=()
stop_servers() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() { stop_servers; rm -rf "$W"; }
trap cleanup EXIT
T0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - T0 )) s"; }

G=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=index,name,memory.total,memory.used --format=csv,noheader
nproc
MEM_GPUS=$(( G > 1 ? G - 1 : 1 ))
gpu_of_server() { if [ "$G" -gt 1 ]; then echo $(( 1 + $1 % MEM_GPUS )); else echo 0; fi; }
GPU_BYTES=$(( 132 * 1024 * 1024 * 1024 ))  # of the 139 GiB: room for the CUDA context and scratch

make_model() {  # name knum
  python3 - "$W/$1.json" "$2" <<'PY'
import json, sys
c = json.load(open("bench/gpu/h200_model.json"))
c["memory"]["knum"] = int(sys.argv[2])
json.dump(c, open(sys.argv[1], "w"))
PY
  "$B/ultramem-make-checkpoint" --config "$W/$1.json" --out "$W/$1" --dtype BF16 --scale 0.02 \
    --shuffle_dtype I32 --synthetic_values_seed 7
}
echo "== checkpoints (dense weights, keys, shuffle indices; values synthetic, seed 7)"
pids_make=()
[ "$SKIP_FITS" = 1 ] || { make_model fits "$KNUM_FITS" & pids_make+=($!); }
make_model large "$KNUM_LARGE" & pids_make+=($!)
wait "${pids_make[@]}"
du -sh "$W"/fits "$W/large" 2>/dev/null || true
echo "checkpoints ready after $(elapsed)"

record() {  # model shards json-lines...
  local model=$1 shards=$2
  shift 2
  for line in "$@"; do
    python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d["model"]=sys.argv[1]; d["shards"]=int(sys.argv[2]); print(json.dumps(d))' \
      "$model" "$shards" "$line" | tee -a "$RESULTS"
  done
}

bench() {  # model [flags...]: prints the bench's JSON lines
  CUDA_VISIBLE_DEVICES=0 "$B/ultramem-bench-decode" --model "$W/$1" --backend "$BACKEND" \
    --batch "$BATCHES" --prompt "$PROMPT" --steps 32 "${@:2}"
}

run_shards() {  # model knum shards
  local model=$1 knum=$2 S=$3
  local N=$(( knum * knum ))
  local per_gpu=$(( (S + MEM_GPUS - 1) / MEM_GPUS ))
  local cap=$(( GPU_BYTES / per_gpu ))
  local map="$W/map-$model-$S.pbtxt"
  echo "model_id: \"scaleout-$model\"" > "$map"
  stop_servers
  rm -rf "$W/store-$model-"*
  for i in $(seq 0 $((S - 1))); do
    local lo=$(( N * i / S )) hi=$(( N * (i + 1) / S ))
    "$B/ultramem-import" --checkpoint "$W/$model" --store-dir "$W/store-$model-$i" --version v1 \
      --model-id "scaleout-$model" --rows "$lo:$hi" --progress off > "$W/import-$model-$S-$i.log" 2>&1 \
      || { cat "$W/import-$model-$S-$i.log"; return 1; }
    local gpu
    gpu=$(gpu_of_server "$i")
    CUDA_VISIBLE_DEVICES=$gpu "$B/ultramem-memory-server" --store-dir "$W/store-$model-$i" \
      --listen "unix:$W/m-$model-$S-$i.sock" --metrics-listen "" --device "$MEM_DEVICE" \
      --hot-capacity-bytes "$cap" > "$W/mem-$model-$S-$i.log" 2>&1 &
    pids+=($!)
    echo "shards { name: \"m$i\" block { row_begin: $lo row_end: $hi } replicas: \"unix:$W/m-$model-$S-$i.sock\" }" >> "$map"
  done
  for i in $(seq 0 $((S - 1))); do
    for _ in $(seq 1 1200); do grep -q '^SERVING' "$W/mem-$model-$S-$i.log" && break; sleep 0.1; done
    grep -q '^SERVING' "$W/mem-$model-$S-$i.log" || { echo "server $i of $S did not start:"; tail -5 "$W/mem-$model-$S-$i.log"; return 1; }
  done
  echo "-- $model: $S shard(s) serving after $(elapsed) (capacity $((cap >> 30)) GiB each, GPUs:$(for i in $(seq 0 $((S - 1))); do printf ' %s' "$(gpu_of_server "$i")"; done))"
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader | tr '\n' ';'; echo
  mapfile -t lines < <(bench "$model" --shard-map "$map")
  record "$model" "$S" "${lines[@]}"
  { echo "== $model, $S shards, server 0"; cat "$W/mem-$model-$S-0.log"; } >> "$OUT/servers.log" 2>/dev/null || true
  stop_servers
}

if [ "$SKIP_FITS" != 1 ]; then
  echo "== fits: in-process (values on GPU 0)"
  mapfile -t lines < <(bench fits)
  record fits 0 "${lines[@]}"
  for S in $SHARDS_FITS; do run_shards fits "$KNUM_FITS" "$S"; done
fi
for S in $SHARDS_LARGE; do run_shards large "$KNUM_LARGE" "$S"; done

echo "== summary ($(elapsed))"
python3 - "$RESULTS" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| model | shards | batch | µs/step | tokens/s | hidden |")
print("|---|---:|---:|---:|---:|---:|")
for r in rows:
    print("| %s | %s | %d | %.0f | %.0f | %s |" % (r["model"], r["shards"] or "in-process", r["batch"],
          r["step_ms"] * 1e3, r["tokens_per_s"], "%.0f%%" % (100 * r["hidden_share"]) if r["shards"] else "-"))
PY
