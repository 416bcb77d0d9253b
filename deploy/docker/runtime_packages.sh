#!/usr/bin/env bash
# Prints the Debian/Ubuntu packages that hold the shared libraries the given programs load, one a
# line, so that the runtime stage of a Dockerfile installs exactly those (and no -dev package).
#   deploy/docker/runtime_packages.sh BIN... > runtime-packages.txt
# Libraries of the CUDA toolkit (/usr/local/cuda*) and the driver (libcuda, libnvidia-*) are left
# out: the nvidia/cuda runtime image and the NVIDIA container toolkit provide them.
set -euo pipefail
errors=$(mktemp)
for bin in "$@"; do
  while read -r lib arrow path _; do
    if [ "$path" = "not" ]; then
      case "$lib" in libcuda.so*|libnvidia-*) continue ;; esac
      echo "runtime_packages.sh: $bin needs $lib, which is not found" >&2
      echo x >> "$errors"
      continue
    fi
    [ "$arrow" = "=>" ] && [ -n "$path" ] || continue
    real=$(readlink -f "$path")
    case "$real" in /usr/local/cuda*|*/libcuda.so*|*/libnvidia-*) continue ;; esac
    pkg=$(dpkg -S "$real" 2>/dev/null || dpkg -S "${real#/usr}" 2>/dev/null || dpkg -S "$path" 2>/dev/null || true)
    if [ -z "$pkg" ]; then
      echo "runtime_packages.sh: no package holds $real (needed by $bin)" >&2
      echo x >> "$errors"
      continue
    fi
    echo "${pkg%%:*}"
  done < <(ldd "$bin")
done | sort -u
if [ -s "$errors" ]; then rm -f "$errors"; exit 1; fi
rm -f "$errors"
