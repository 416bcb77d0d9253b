"""Python stubs for proto/ generated at test time with protoc and grpc_python_plugin (Debian's
protobuf-compiler and protobuf-compiler-grpc), imported from a temporary directory."""
import importlib
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OUT = None


def load():
    """Returns (chat_pb2, chat_pb2_grpc, health_pb2, health_pb2_grpc)."""
    global _OUT
    if _OUT is None:
        _OUT = tempfile.mkdtemp(prefix="um_pystubs_")
        plugin = shutil.which("grpc_python_plugin") or "/usr/bin/grpc_python_plugin"
        protos = ["ultramem/v1/chat.proto", "ultramem/v1/memory.proto"]
        subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"), "--python_out", _OUT,
                        "--grpc_python_out", _OUT, "--plugin=protoc-gen-grpc_python=" + plugin]
                       + protos, check=True)
        # grpc.health.v1 under another file path: a Python package named "grpc" would shadow grpcio.
        hdir = os.path.join(_OUT, "umhealth")
        os.makedirs(hdir)
        with open(os.path.join(hdir, "health.proto"), "w") as f:
            f.write(HEALTH_PROTO)
        subprocess.run(["protoc", "-I", _OUT, "--python_out", _OUT, "--grpc_python_out", _OUT,
                        "--plugin=protoc-gen-grpc_python=" + plugin, "umhealth/health.proto"],
                       check=True)
        for d in ["ultramem", "ultramem/v1", "umhealth"]:
            open(os.path.join(_OUT, d, "__init__.py"), "a").close()
        sys.path.insert(0, _OUT)
    chat_pb2 = importlib.import_module("ultramem.v1.chat_pb2")
    chat_grpc = importlib.import_module("ultramem.v1.chat_pb2_grpc")
    health_pb2 = importlib.import_module("umhealth.health_pb2")
    health_grpc = importlib.import_module("umhealth.health_pb2_grpc")
    return chat_pb2, chat_grpc, health_pb2, health_grpc


# The standard grpc.health.v1 service definition (github.com/grpc/grpc-proto).
HEALTH_PROTO = """
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health {
  rpc Check(HealthCheckRequest) returns (HealthCheckResponse);
  rpc Watch(HealthCheckRequest) returns (stream HealthCheckResponse);
}
"""
