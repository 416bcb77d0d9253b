#!/usr/bin/env bash
# Installs the Debian 12 packages the build, the tests and the local cluster need, if missing.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config clang
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  libabsl-dev librocksdb-dev prometheus-cpp-dev nlohmann-json3-dev libopenblas-dev
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  python3-torch python3-numpy python3-grpcio python3-protobuf python3-yaml
  prometheus iproute2 procps
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
