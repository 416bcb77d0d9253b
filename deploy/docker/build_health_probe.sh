#!/usr/bin/env bash
# Builds ultramem-health-probe (deploy/docker/health_probe.cc) into OUT_DIR with Debian's gRPC.
#   deploy/docker/build_health_probe.sh OUT_DIR
# Needs: g++ protobuf-compiler protobuf-compiler-grpc libgrpc++-dev libprotobuf-dev grpc-proto pkg-config.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build_health_probe.sh OUT_DIR}
mkdir -p "$out/gen"
protoc -I/usr/share/grpc-proto --cpp_out="$out/gen" --grpc_out="$out/gen" \
  --plugin=protoc-gen-grpc="$(command -v grpc_cpp_plugin)" grpc/health/v1/health.proto
g++ -std=c++17 -O2 -o "$out/ultramem-health-probe" -I"$out/gen" "$here/health_probe.cc" \
  "$out/gen/grpc/health/v1/health.pb.cc" "$out/gen/grpc/health/v1/health.grpc.pb.cc" \
  $(pkg-config --cflags --libs grpc++ protobuf)
