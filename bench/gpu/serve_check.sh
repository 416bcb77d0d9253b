#!/usr/bin/env bash
# On the GPU machine, one call: the local cluster of scripts/serve.sh with the compute node on the
# GPU (--backend cuda), 32 concurrent chats through the gateway, and the compute node's metrics.
# Bundle: ../shared/tools/device-bundle .device build/bin/{ultramem-import,ultramem-memory-server,
#   ultramem-compute-node,ultramem-gateway,ultramem-chat,ultramem-generate}
set -euo pipefail
export LD_LIBRARY_PATH=$PWD/.device/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
state=$(mktemp -d /tmp/um_serve_XXXXXX)
UM_BUILD_DIR=.device UM_STATE_DIR=$state UM_GATEWAY_PORT=0 UM_COMPUTE_PORT=0 UM_MEMORY_PORTS=0,0 \
  UM_METRICS_PORTS=0,0,0,0 UM_COMPUTE_ARGS="--backend cuda" scripts/serve.sh --no-build > "$state/serve.out" 2>&1 &
serve=$!
for _ in $(seq 1 600); do grep -q '^READY' "$state/serve.out" && break; kill -0 $serve || break; sleep 0.2; done
grep -q '^READY' "$state/serve.out" || { cat "$state/serve.out"; tail -20 "$state"/state/logs/*.log 2>/dev/null; exit 1; }
gw=$(sed -n 's/^ENDPOINTS gateway=\([^ ]*\).*/\1/p' "$state/serve.out")
cm=$(sed -n 's/^ENDPOINTS .*metrics=[0-9]*,\([0-9]*\),.*/\1/p' "$state/serve.out")
grep -i "backend\|cuda\|serving" "$state"/logs/compute.log | head -5 || true
echo "== one greedy chat (GPU compute node) vs ultramem-generate on the CPU"
.device/bin/ultramem-chat --endpoint "$gw" --max-tokens 64 "And God said" > "$state/chat.txt"
.device/bin/ultramem-generate --model models/ultramem-tiny --prompt "And God said" --max-tokens 64 2>/dev/null > "$state/gen.txt"
echo "GPU chat: $(head -c 200 "$state/chat.txt" | tr '\n' '|')"
echo "CPU gen:  $(head -c 200 "$state/gen.txt" | tr '\n' '|')"
echo "== 32 concurrent chats of 128 tokens"
t0=$(date +%s.%N)
for i in $(seq 1 32); do
  .device/bin/ultramem-chat --endpoint "$gw" --max-tokens 128 --temperature 0.8 --seed "$i" "Blessed are the" > "$state/c$i.txt" 2> "$state/c$i.err" &
done
fail=0; for j in $(jobs -p); do [ "$j" = "$serve" ] && continue; wait "$j" || fail=$((fail + 1)); done
t1=$(date +%s.%N)
echo "failed: $fail of 32; wall $(python3 -c "print(round($t1 - $t0, 2))") s"
tail -1 "$state/c1.err"
echo "== compute-node metrics"
python3 - "$cm" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("ultramem_generation_tokens_total", "ultramem_requests_running", "ultramem_time_to_first_token_seconds_sum",
                        "ultramem_time_to_first_token_seconds_count", "ultramem_inter_token_latency_seconds_sum",
                        "ultramem_inter_token_latency_seconds_count", "ultramem_memory_wait_seconds_total", "ultramem_memory_lookup_seconds_total")):
        print(" ", line)
PY
kill -TERM $serve; wait $serve || true  # a background job ignores SIGINT in a script
