#!/usr/bin/env bash
# CPU decode at batch 1: the C++ engine against the PyTorch reference (same checkpoint, same
# threads, one run), and the engine against the bytes floor. Results go to bench/RESULTS.md by hand.
#
#   bench/engine/run.sh [BUILD_DIR]     (default build; needs ultramem-bench-decode built)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build}
THREADS=${THREADS:-2}
work=$(mktemp -d /tmp/um_bench_XXXXXX)
trap 'rm -rf "$work"' EXIT
printf "%-8s %-22s %10s %10s %8s %10s %9s\n" model dense_params eng_ms torch_ms speedup floor_ms vs_floor
for name in small base100m; do
  "$BUILD/bin/ultramem-make-checkpoint" --config "bench/engine/$name.json" --out "$work/$name" --dtype F32
  eng=$("$BUILD/bin/ultramem-bench-decode" --model "$work/$name" --threads "$THREADS" --batch 1)
  ref=$(/usr/bin/python3 bench/engine/torch_decode.py --model "$work/$name" --threads "$THREADS" --batch 1)
  params=$(/usr/bin/python3 - "$work/$name" <<'PY'
import json, sys
c = json.load(open(sys.argv[1] + "/config.json"))
D, L, F, V = c["hidden_size"], c["num_layers"], c["intermediate_size"], c["vocab_size"]
hd, nh, nkv = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
per = D * nh * hd * 2 + D * nkv * hd * 2 + 3 * D * F
print(L * per + V * D * (1 if c["tie_word_embeddings"] else 2))
PY
)
  /usr/bin/python3 - "$name" "$params" "$eng" "$ref" <<'PY'
import json, sys
name, params, eng, ref = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), json.loads(sys.argv[4])
print("%-8s %-22s %10.3f %10.3f %7.2fx %10.3f %8.2fx" % (name, "%.1fM" % (params / 1e6), eng["step_ms"], ref["step_ms"],
      ref["step_ms"] / eng["step_ms"], eng["floor_ms"], eng["vs_floor"]))
print("  engine:", json.dumps(eng))
PY
  rm -rf "$work/$name"
done
