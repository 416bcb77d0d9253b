#!/usr/bin/env bash
# Installs what is missing (Debian 12 packages), configures, builds and runs every test.
#
#   scripts/test.sh            # everything
#   BUILD_DIR=build-x scripts/test.sh -R engine   # extra arguments go to ctest
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}

scripts/install-deps.sh

echo "== configure ($BUILD_DIR)"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$BUILD_DIR.configure.log" 2>&1 ||
  { cat "$BUILD_DIR.configure.log"; exit 1; }
echo "== build"
ninja -C "$BUILD_DIR" -j"$(nproc)"
echo "== test"
# Fresh random checkpoints on every run; the seeds are printed by each test.
ctest --test-dir "$BUILD_DIR" --output-on-failure -j"$(nproc)" --timeout 900 "$@"
