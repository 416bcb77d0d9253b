// Implementation of services/grpc_util.h.
#include "services/grpc_util.h"

#include <grpcpp/generic/generic_stub.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"

namespace ultramem::services {

namespace {

// One Check call: what must live until its callback.
struct HealthProbe {
  explicit HealthProbe(std::shared_ptr<grpc::Channel> channel) : stub(std::move(channel)) {}
  grpc::GenericStub stub;
  grpc::ClientContext context;
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
  std::function<void(absl::StatusOr<bool>)> done;
};

std::string EncodeCheckRequest(const std::string& service) {
  if (service.empty()) return "";
  std::string out = "\x0a";  // field 1 (service), wire type 2
  for (size_t n = service.size(); ; n >>= 7) {
    if (n < 0x80) {
      out.push_back(static_cast<char>(n));
      break;
    }
    out.push_back(static_cast<char>((n & 0x7f) | 0x80));
  }
  return out + service;
}

// HealthCheckResponse{status = 1 (varint)}: SERVING is 1. Other fields are skipped.
bool DecodeServing(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return false;
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  size_t i = 0;
  auto varint = [&](uint64_t* v) {
    *v = 0;
    for (int shift = 0; i < bytes.size() && shift < 64; shift += 7) {
      const uint8_t b = static_cast<uint8_t>(bytes[i++]);
      *v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  };
  uint64_t status = 0;
  while (i < bytes.size()) {
    uint64_t tag = 0, v = 0;
    if (!varint(&tag)) return false;
    switch (tag & 7) {
      case 0:
        if (!varint(&v)) return false;
        if ((tag >> 3) == 1) status = v;
        break;
      case 2:
        if (!varint(&v) || v > bytes.size() - i) return false;
        i += v;
        break;
      default:
        return false;
    }
  }
  return status == 1;
}

}  // namespace

void CheckHealthAsync(const std::shared_ptr<grpc::Channel>& channel, const std::string& service, absl::Duration timeout,
                      std::function<void(absl::StatusOr<bool>)> done) {
  auto* probe = new HealthProbe(channel);
  probe->done = std::move(done);
  probe->context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  const std::string encoded = EncodeCheckRequest(service);
  grpc::Slice slice(encoded);
  probe->request = grpc::ByteBuffer(&slice, 1);
  probe->stub.UnaryCall(&probe->context, "/grpc.health.v1.Health/Check", grpc::StubOptions(),
                 &probe->request, &probe->response, [probe](grpc::Status status) {
                   absl::StatusOr<bool> result =
                       status.ok() ? absl::StatusOr<bool>(DecodeServing(probe->response))
                                   : absl::StatusOr<bool>(FromGrpc(status));
                   auto done = std::move(probe->done);
                   delete probe;
                   done(std::move(result));
                 });
}

absl::StatusOr<bool> CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                                 absl::Duration timeout) {
  absl::Notification finished;
  absl::StatusOr<bool> result;
  CheckHealthAsync(channel, service, timeout, [&](absl::StatusOr<bool> r) {
    result = std::move(r);
    finished.Notify();
  });
  finished.WaitForNotification();
  return result;
}

}  // namespace ultramem::services
