#!/usr/bin/env bash
# The memory server's GPU hot tier on the GPU machine, from a bundle (issue #6 item 3, issue #8):
#   1. the GPU tests (memory_server_cuda_tests: GPU tier = CPU tier, synthetic fill, threads);
#   2. the pooling kernel's effective bandwidth against the device copy bandwidth
#      (ultramem-gpu-pool-bench, 1M rows x 512 bf16);
#   3. bench (d): Lookup p50/p99 through gRPC at 1, 64, 256 tokens, GPU tier vs CPU tier on one
#      synthetic store (1M rows x 512, fully hot on both);
#   4. ultramem-memory-server --device=cuda on a synthetic shard of 2 layers x 37.7M rows x 512
#      bf16 (77 GB): seconds from start to SERVING, rows read back against the function, p50s.
#      Its MANIFEST.json is written here by hand, as ultramem-import writes it for a synthetic
#      checkpoint (bench/engine's make-checkpoint would first write 2.4 GB of shuffle_index).
# Full logs go to $OUT (default /tmp/um_memgpu_out); a short table is printed last.
#
#   Bundle here:  ninja -C build-cuda memory_server_cuda_tests ultramem-gpu-pool-bench \
#                   memory_server_gpu_tier_bench ultramem-memory-server
#                 /work/shared/tools/device-bundle DIR build-cuda/bin/{those four}
#                 cp bench/gpu/memory_gpu.sh DIR/
#   On the GPU:   export LD_LIBRARY_PATH=DIR/lib:/usr/local/cuda/lib64:$LD_LIBRARY_PATH
#                 bash DIR/memory_gpu.sh          (SKIP_TESTS=1 SKIP_BIG=1 to trim)
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${BIN:-$HERE/bin}
OUT=${OUT:-/tmp/um_memgpu_out}
mkdir -p "$OUT"
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 ))s] $*"; }

stamp "check the bundle"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for p in memory_server_cuda_tests ultramem-gpu-pool-bench memory_server_gpu_tier_bench ultramem-memory-server; do
  [[ -x $BIN/$p ]] || { echo "missing $BIN/$p"; exit 1; }
  if ldd "$BIN/$p" | grep -q "not found"; then ldd "$BIN/$p" | grep "not found"; exit 1; fi
done

tests="skipped"
if [[ -z ${SKIP_TESTS:-} ]]; then
  stamp "GPU tests"
  timeout 80 "$BIN/memory_server_cuda_tests" >"$OUT/tests.log" 2>&1; rc=$?
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[  FAILED|GPU TEST SKIPPED|Failure|Expected|Which is" "$OUT/tests.log" | head -30
  tests="rc=$rc, $(grep -E '^\[  PASSED' "$OUT/tests.log" | head -1)"
fi

stamp "pooling kernel bandwidth"
timeout 40 "$BIN/ultramem-gpu-pool-bench" --tokens 1,64,256,4096 2>&1 | tee "$OUT/pool_bench.log"

stamp "bench (d): GPU vs CPU hot tier through gRPC"
timeout 50 "$BIN/memory_server_gpu_tier_bench" --knum 1024 --calls 300 2>&1 | tee "$OUT/tier_bench.log"

if [[ -z ${SKIP_BIG:-} ]]; then
  stamp "77 GB synthetic shard on the GPU"
  STORE=/dev/shm/um_big_store
  [[ -d /dev/shm ]] || STORE=/tmp/um_big_store
  rm -rf "$STORE"
  mkdir -p "$STORE/versions/v1"
  N=37748736  # 6144^2
  cat >"$STORE/versions/v1/MANIFEST.json" <<JSON
{"format_version": 1, "model_id": "synthetic-77g", "version": "v1", "source": "by hand",
 "num_rows": $N, "expand": 4, "value_dim": 512, "cores": 2, "num_memory_layers": 2,
 "dtype": "BF16", "rows_per_key": 4, "synthetic_values": {"seed": 7, "scale": 1.0},
 "blocks": [{"layer": 0, "row_begin": 0, "row_end": $N, "col_begin": 0, "col_end": 512, "crc32c": 0},
            {"layer": 1, "row_begin": 0, "row_end": $N, "col_begin": 0, "col_end": 512, "crc32c": 0}]}
JSON
  echo v1 >"$STORE/CURRENT"
  SOCK=/tmp/um_big.sock
  rm -f "$SOCK"
  start=$(date +%s.%N)
  "$BIN/ultramem-memory-server" --store_dir="$STORE" --device=cuda --listen="unix:$SOCK" \
    --metrics_listen= --hot_capacity_bytes=100000000000 --current_poll_ms=0 \
    >"$OUT/big_server.out" 2>"$OUT/big_server.err" &
  pid=$!
  for _ in $(seq 1 600); do
    grep -q SERVING "$OUT/big_server.out" 2>/dev/null && break
    kill -0 $pid 2>/dev/null || break
    sleep 0.1
  done
  end=$(date +%s.%N)
  cat "$OUT/big_server.err" | tail -5
  if grep -q SERVING "$OUT/big_server.out"; then
    big_start=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}')
    echo "SERVING after ${big_start} s"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader || true
    timeout 30 "$BIN/memory_server_gpu_tier_bench" --connect="unix:$SOCK" --verify_seed 7 \
      --verify_scale 1 --calls 300 2>&1 | tee "$OUT/big_bench.log"
  else
    big_start="did not start"
  fi
  kill -TERM $pid 2>/dev/null
  wait $pid 2>/dev/null
  rm -rf "$STORE"
fi

stamp "summary"
echo "tests: $tests"
grep -E "copy bandwidth|^ +[0-9]+ " "$OUT/pool_bench.log" | sed 's/^/kernel: /'
grep -E "loaded in|^ +[0-9]+ " "$OUT/tier_bench.log" | sed 's/^/tiers: /'
[[ -z ${SKIP_BIG:-} ]] && echo "77 GB synthetic shard: SERVING after ${big_start} s" && \
  grep -E "verify|^ +[0-9]+ " "$OUT/big_bench.log" | sed 's/^/big: /'
exit 0
