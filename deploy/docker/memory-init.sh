#!/bin/sh
# ultramem-memory-init: imports this shard's row range of the model's value tables into the store
# when the store has no published version yet (no CURRENT), then optionally execs a command.
#
#   ultramem-memory-init [COMMAND ARGS...]      e.g. ultramem-memory-init ultramem-memory-server --store-dir ...
#
# Environment (defaults in brackets):
#   ULTRAMEM_MODEL_DIR   model directory (config.json + safetensors)          [/opt/ultramem/models/ultramem-tiny]
#   ULTRAMEM_STORE_DIR   store directory (the shard's volume)                 [/var/lib/ultramem/store]
#   ULTRAMEM_MODEL_ID    --model-id; must equal model_id in the shard map     [ultramem-tiny]
#   ULTRAMEM_STORE_VERSION  store version                                     [v1]
#   ULTRAMEM_SHARD_COUNT number of row shards                                 [2]
#   ULTRAMEM_SHARD_INDEX this shard's index; when unset it is the ordinal of a StatefulSet pod,
#                        the number after the last '-' of $HOSTNAME (ultramem-memory-1 -> 1)
#   ULTRAMEM_ROWS_TOTAL  rows N of every memory layer; default knum*knum read from config.json
#   ULTRAMEM_ROWS        explicit row range B:E (overrides the split above)
# Shard i of S gets rows [i*N/S, (i+1)*N/S). The import is resumable: a pod killed half-way
# resumes on its next start (CURRENT is written only when the version is complete).
set -eu

model_dir=${ULTRAMEM_MODEL_DIR:-/opt/ultramem/models/ultramem-tiny}
store_dir=${ULTRAMEM_STORE_DIR:-/var/lib/ultramem/store}
model_id=${ULTRAMEM_MODEL_ID:-ultramem-tiny}
version=${ULTRAMEM_STORE_VERSION:-v1}
count=${ULTRAMEM_SHARD_COUNT:-2}

fail() { echo "ultramem-memory-init: $*" >&2; exit 1; }

if [ -n "${ULTRAMEM_ROWS:-}" ]; then
  rows=$ULTRAMEM_ROWS
else
  index=${ULTRAMEM_SHARD_INDEX:-}
  if [ -z "$index" ]; then
    host=${HOSTNAME:-$(hostname)}
    index=${host##*-}
  fi
  case "$index" in ''|*[!0-9]*) fail "cannot derive the shard index (ULTRAMEM_SHARD_INDEX unset, HOSTNAME '${HOSTNAME:-}')";; esac
  case "$count" in ''|*[!0-9]*|0) fail "bad ULTRAMEM_SHARD_COUNT '$count'";; esac
  [ "$index" -lt "$count" ] || fail "shard index $index >= shard count $count"
  total=${ULTRAMEM_ROWS_TOTAL:-}
  if [ -z "$total" ]; then
    # config.json: "memory": { ..., "knum": 128, ... }  ->  N = knum^2
    knum=$(tr -d ' \n\t' < "$model_dir/config.json" | sed -n 's/.*"knum":\([0-9][0-9]*\).*/\1/p')
    [ -n "$knum" ] || fail "no memory.knum in $model_dir/config.json (set ULTRAMEM_ROWS_TOTAL)"
    total=$((knum * knum))
  fi
  rows="$((index * total / count)):$(((index + 1) * total / count))"
fi

if [ -f "$store_dir/CURRENT" ]; then
  echo "ultramem-memory-init: $store_dir already has a published version ($(cat "$store_dir/CURRENT")); no import"
else
  echo "ultramem-memory-init: importing rows $rows of $model_dir (model id $model_id) into $store_dir version $version"
  mkdir -p "$store_dir"
  ultramem-import --checkpoint "$model_dir" --store-dir "$store_dir" --version "$version" \
    --model-id "$model_id" --rows "$rows"
fi

[ "$#" -eq 0 ] || exec "$@"
