// Implementation of memory_server/tests/test_util.h.
#include "memory_server/tests/test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <future>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "common/checkpoint_writer.h"
#include "gtest/gtest.h"

namespace ultramem::memory::testing {

TempDir::TempDir() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string tmpl = std::string(base != nullptr ? base : "/tmp") + "/ultramem_ms_XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  char* made = mkdtemp(buf.data());
  EXPECT_NE(made, nullptr);
  path_ = made != nullptr ? made : "/tmp";
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

ModelConfig SmallConfig(int knum, int value_dim) {
  ModelConfig c;
  c.model_type = "ultramem";
  c.vocab_size = 300;
  c.hidden_size = 32;
  c.num_layers = 2;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 16;
  c.intermediate_size = 64;
  c.tokenizer.special_tokens = {{"<|bos|>", 256}, {"<|eos|>", 257}};
  MemoryConfig m;
  m.layers = {{0, 1}, {1, 1}};
  m.knum = knum;
  m.value_expand = 4;
  m.key_dim = 8;
  m.value_dim = value_dim;
  m.heads = 2;
  m.topk = 4;
  m.tucker_rank = 2;
  m.tucker_cores = 2;
  c.memory = m;
  return c;
}

void WriteSmallCheckpoint(const std::string& dir, const ModelConfig& config, DType dtype,
                          uint64_t seed) {
  RandomCheckpointOptions options;
  options.float_dtype = dtype;
  options.seed = seed;
  options.scale = 1.0f;
  options.split_files = true;
  absl::Status status = WriteRandomCheckpoint(dir, config, options);
  ASSERT_TRUE(status.ok()) << status;
}

Selections RandomSelections(std::mt19937_64& rng, int layer, int num_tokens, int per_token,
                            int64_t row_begin, int64_t row_end, int expand, int cores) {
  Selections s;
  s.layer = layer;
  s.num_tokens = num_tokens;
  std::uniform_int_distribution<int64_t> row(row_begin, row_end - 1);
  std::uniform_int_distribution<int32_t> group(0, expand - 1);
  std::normal_distribution<float> weight(0.0f, 1.0f);
  for (int t = 0; t <= num_tokens; ++t) s.offsets.push_back(t * per_token);
  for (int i = 0; i < num_tokens * per_token; ++i) {
    s.rows.push_back(row(rng));
    s.groups.push_back(group(rng));
    for (int c = 0; c < cores; ++c) s.weights.push_back(weight(rng));
  }
  return s;
}

Selections ZipfSelections(std::mt19937_64& rng, int layer, int num_tokens, int per_token,
                          int64_t row_begin, int64_t row_end, int expand, int cores, double exponent) {
  Selections s = RandomSelections(rng, layer, num_tokens, per_token, row_begin, row_end, expand, cores);
  const int64_t n = row_end - row_begin;
  std::vector<double> cdf(static_cast<size_t>(n));
  double total = 0;
  for (int64_t k = 0; k < n; ++k) cdf[k] = (total += 1.0 / std::pow(static_cast<double>(k + 1), exponent));
  // Rank k maps to a scattered row so that popular rows are not neighbours.
  std::uniform_real_distribution<double> u(0, total);
  for (int64_t& row : s.rows) {
    const int64_t rank = std::lower_bound(cdf.begin(), cdf.end(), u(rng)) - cdf.begin();
    row = row_begin + static_cast<int64_t>((static_cast<uint64_t>(rank) * 2654435761ull) % n);
  }
  return s;
}

ultramem::v1::LookupRequest MakeRequest(const Selections& sel, int cores, bool uniform,
                                        bool int32_rows, ultramem::v1::DType out) {
  ultramem::v1::LookupRequest r;
  r.set_layer(static_cast<uint32_t>(sel.layer));
  r.set_num_tokens(static_cast<uint32_t>(sel.num_tokens));
  r.set_num_selections(static_cast<uint32_t>(sel.rows.size()));
  if (int32_rows) {
    std::vector<int32_t> rows(sel.rows.begin(), sel.rows.end());
    r.set_row_type(ultramem::v1::INDEX_TYPE_INT32);
    r.set_rows(std::string(reinterpret_cast<const char*>(rows.data()), rows.size() * 4));
  } else {
    r.set_row_type(ultramem::v1::INDEX_TYPE_INT64);
    r.set_rows(std::string(reinterpret_cast<const char*>(sel.rows.data()), sel.rows.size() * 8));
  }
  r.set_groups(std::string(reinterpret_cast<const char*>(sel.groups.data()), sel.groups.size() * 4));
  r.set_num_cores(static_cast<uint32_t>(cores));
  r.set_weights(std::string(reinterpret_cast<const char*>(sel.weights.data()), sel.weights.size() * 4));
  if (!uniform) {
    r.set_token_offsets(
        std::string(reinterpret_cast<const char*>(sel.offsets.data()), sel.offsets.size() * 4));
  }
  r.set_out_dtype(out);
  return r;
}

std::vector<float> DirectPool(const Checkpoint& checkpoint, const Selections& sel, int col_begin,
                              int col_end, bool round_bf16) {
  const MemoryConfig& m = *checkpoint.config().memory;
  const int width = col_end - col_begin;
  const int chunk = m.value_dim / m.tucker_cores;
  std::vector<double> y(static_cast<size_t>(sel.num_tokens) * m.value_expand * width, 0.0);
  std::vector<float> row(static_cast<size_t>(m.value_dim));
  const std::string name = "memory." + std::to_string(sel.layer) + ".values";
  for (int t = 0; t < sel.num_tokens; ++t) {
    for (int s = sel.offsets[t]; s < sel.offsets[t + 1]; ++s) {
      absl::Status st = checkpoint.ReadF32Block(name, sel.rows[s], sel.rows[s] + 1, 0, m.value_dim,
                                                row.data());
      EXPECT_TRUE(st.ok()) << st;
      for (int c = col_begin; c < col_end; ++c) {
        const float v = round_bf16 ? Bf16ToF32(F32ToBf16(row[c])) : row[c];
        y[(static_cast<size_t>(t) * m.value_expand + sel.groups[s]) * width + (c - col_begin)] +=
            static_cast<double>(sel.weights[static_cast<size_t>(s) * m.tucker_cores + c / chunk]) * v;
      }
    }
  }
  return std::vector<float>(y.begin(), y.end());
}

std::vector<float> ResponseValues(const ultramem::v1::LookupResponse& response) {
  std::vector<float> out;
  if (response.dtype() == ultramem::v1::DTYPE_BF16) {
    out.resize(response.y().size() / 2);
    for (size_t i = 0; i < out.size(); ++i) {
      uint16_t v;
      std::memcpy(&v, response.y().data() + 2 * i, 2);
      out[i] = Bf16ToF32(v);
    }
  } else {
    out.resize(response.y().size() / 4);
    std::memcpy(out.data(), response.y().data(), out.size() * 4);
  }
  return out;
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    worst = std::max(worst, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  return worst;
}

namespace {

std::string ToString(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return "";
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

grpc::ByteBuffer FromString(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

}  // namespace

std::string HealthStatus(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::ByteBuffer request = FromString(""), response;  // HealthCheckRequest{service: ""}
  std::promise<grpc::Status> done;
  stub.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&done](grpc::Status status) { done.set_value(status); });
  grpc::Status status = done.get_future().get();  // the deadline bounds the wait
  if (!status.ok()) return "error " + std::to_string(status.error_code()) + " " + status.error_message();
  const std::string bytes = ToString(response);  // HealthCheckResponse{status = 1}: 08 xx
  if (bytes == std::string("\x08\x01", 2)) return "SERVING";
  if (bytes == std::string("\x08\x02", 2)) return "NOT_SERVING";
  return "unknown";
}

std::string ReflectionServices(const std::shared_ptr<grpc::Channel>& channel) {
  class Reactor : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
   public:
    grpc::ByteBuffer request = FromString(std::string("\x3a\x00", 2));  // list_services: ""
    grpc::ByteBuffer response;
    std::promise<std::string> done;
    std::string received;
    void Start() {
      StartWrite(&request);
      StartRead(&response);
      StartCall();
    }
    void OnWriteDone(bool) override { StartWritesDone(); }
    void OnReadDone(bool ok) override {
      if (ok) received += ToString(response);
    }
    void OnDone(const grpc::Status& status) override { done.set_value(status.ok() ? received : ""); }
  };
  grpc::GenericStub stub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  Reactor reactor;
  stub.PrepareBidiStreamingCall(&context, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                grpc::StubOptions(), &reactor);
  auto future = reactor.done.get_future();
  reactor.Start();
  return future.get();
}

std::string ScrapeMetrics(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval timeout{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buf[65536];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
    }
  }
  ::close(fd);
  return out;
}

}  // namespace ultramem::memory::testing
