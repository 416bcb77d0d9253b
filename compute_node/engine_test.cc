// Tests of the CPU engine's own invariants (the agreement with the PyTorch reference is
// tests/engine_vs_reference.py): prefill equals decode, a batch equals its sequences run alone,
// errors leave sequences unchanged, lookups failures propagate.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/checkpoint_writer.h"
#include "common/testing/test_model_config.h"
#include "compute_node/cpu/memory_select.h"
#include "compute_node/engine.h"
#include "compute_node/model_runtime.h"
#include "compute_node/testing/random_model.h"
#include "gtest/gtest.h"

namespace ultramem {
namespace {

ModelConfig SmallConfig() {
  return testing::TestModelConfig({.num_layers = 4, .max_positions = 64, .memory_layers = {{0, 2}, {1, 1}, {2, 3}}});
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = testing::RandomModel::Create(SmallConfig(), 1234, 0.2f);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    rt_ = &model_->runtime();
  }

  // Logits of every position, one token at a time.
  std::vector<float> Decode(const std::vector<int32_t>& tokens) {
    auto seq = rt_->engine->NewSequence();
    std::vector<float> all;
    for (int32_t t : tokens) {
      SequenceInput in{seq.get(), absl::MakeConstSpan(&t, 1), true};
      ForwardOutput out;
      EXPECT_TRUE(rt_->engine->Forward({&in, 1}, {}, &out).ok());
      all.insert(all.end(), out.logits.begin(), out.logits.end());
    }
    return all;
  }

  std::unique_ptr<testing::RandomModel> model_;
  ModelRuntime* rt_ = nullptr;
};

void ExpectClose(const std::vector<float>& a, const std::vector<float>& b, int64_t vocab) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t row = 0; row * vocab < a.size(); ++row) {
    float max_ref = 0.0f, max_diff = 0.0f;
    for (int64_t v = 0; v < vocab; ++v) {
      max_ref = std::max(max_ref, std::fabs(b[row * vocab + v]));
      max_diff = std::max(max_diff, std::fabs(a[row * vocab + v] - b[row * vocab + v]));
    }
    EXPECT_LE(max_diff, 1e-5f * max_ref) << "position " << row;
  }
}

TEST_F(EngineTest, PrefillEqualsDecode) {
  std::vector<int32_t> tokens = {256, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100};
  auto seq = rt_->engine->NewSequence();
  SequenceInput in{seq.get(), absl::MakeConstSpan(tokens), true};
  ForwardOutput prefill;
  ASSERT_TRUE(rt_->engine->Forward({&in, 1}, {}, &prefill).ok());
  EXPECT_EQ(prefill.rows, static_cast<int64_t>(tokens.size()));
  EXPECT_EQ(seq->length(), static_cast<int64_t>(tokens.size()));
  ExpectClose(Decode(tokens), prefill.logits, 300);
}

TEST_F(EngineTest, ChunkedPrefillEqualsOnePrefill) {
  std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  auto one = rt_->engine->NewSequence();
  SequenceInput in{one.get(), absl::MakeConstSpan(tokens), false};
  ForwardOutput a, b;
  ASSERT_TRUE(rt_->engine->Forward({&in, 1}, {}, &a).ok());
  auto chunked = rt_->engine->NewSequence();
  SequenceInput c1{chunked.get(), absl::MakeConstSpan(tokens.data(), 6), false};
  ASSERT_TRUE(rt_->engine->Forward({&c1, 1}, {}, &b).ok());
  SequenceInput c2{chunked.get(), absl::MakeConstSpan(tokens.data() + 6, 4), false};
  ASSERT_TRUE(rt_->engine->Forward({&c2, 1}, {}, &b).ok());
  ExpectClose(b.logits, a.logits, 300);
}

TEST_F(EngineTest, BatchEqualsSequencesAlone) {
  std::vector<std::vector<int32_t>> prompts = {{5, 6, 7}, {100, 101, 102, 103, 104}, {42}};
  std::vector<std::unique_ptr<Sequence>> seqs;
  for (auto& p : prompts) {
    seqs.push_back(rt_->engine->NewSequence());
    SequenceInput in{seqs.back().get(), absl::MakeConstSpan(p), false};
    ForwardOutput out;
    ASSERT_TRUE(rt_->engine->Forward({&in, 1}, {}, &out).ok());
  }
  // One batched decode step with a different next token per sequence.
  std::vector<int32_t> next = {9, 10, 11};
  std::vector<SequenceInput> batch;
  for (int i = 0; i < 3; ++i) batch.push_back({seqs[i].get(), absl::MakeConstSpan(&next[i], 1), false});
  ForwardOptions fo;
  fo.record_selections = true;
  ForwardOutput batched;
  ASSERT_TRUE(rt_->engine->Forward(absl::MakeConstSpan(batch), fo, &batched).ok());
  ASSERT_EQ(batched.rows, 3);
  for (int i = 0; i < 3; ++i) {
    std::vector<int32_t> full = prompts[i];
    full.push_back(next[i]);
    std::vector<float> alone = Decode(full);
    std::vector<float> last(alone.end() - 300, alone.end());
    std::vector<float> got(batched.logits.begin() + i * 300, batched.logits.begin() + (i + 1) * 300);
    ExpectClose(got, last, 300);
  }
  EXPECT_EQ(batched.selections.size(), 3u * 3 * 8);  // J * tokens * H·m
}

TEST_F(EngineTest, BadTokenIsRefusedAndStateKept) {
  auto seq = rt_->engine->NewSequence();
  std::vector<int32_t> tokens = {1, 2, 300};
  SequenceInput in{seq.get(), absl::MakeConstSpan(tokens), false};
  ForwardOutput out;
  absl::Status st = rt_->engine->Forward({&in, 1}, {}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("token 300"), std::string::npos) << st;
  EXPECT_EQ(seq->length(), 0);
}

TEST_F(EngineTest, ContextOverflowIsRefused) {
  auto seq = rt_->engine->NewSequence();
  std::vector<int32_t> tokens(65, 7);
  SequenceInput in{seq.get(), absl::MakeConstSpan(tokens), false};
  ForwardOutput out;
  absl::Status st = rt_->engine->Forward({&in, 1}, {}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("max_position_embeddings"), std::string::npos) << st;
}

// A pooler whose lookups fail as a dead memory server's would.
class FailingPooler : public RowPooler {
 public:
  std::unique_ptr<PendingPool> Start(const PoolRequest&) override {
    return std::make_unique<ReadyPool>(absl::UnavailableError("shard 3 is down"));
  }
};

TEST_F(EngineTest, LookupFailurePropagatesAndStateKept) {
  FailingPooler failing;
  auto engine = CreateEngine(rt_->weights, &failing, EngineOptions{});
  ASSERT_TRUE(engine.ok());
  auto seq = (*engine)->NewSequence();
  std::vector<int32_t> tokens = {1, 2, 3};
  SequenceInput in{seq.get(), absl::MakeConstSpan(tokens), false};
  ForwardOutput out;
  absl::Status st = (*engine)->Forward({&in, 1}, {}, &out);
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(seq->length(), 0);
}

TEST(TopMTest, DescendingTiesToLowerIndexNanLast) {
  std::vector<float> v = {1.0f, 3.0f, NAN, 3.0f, 2.0f, 3.0f};
  std::vector<int> out(4);
  TopM(v.data(), 6, 4, out.data());
  EXPECT_EQ(out, (std::vector<int>{1, 3, 5, 4}));
}

}  // namespace
}  // namespace ultramem

// A checkpoint whose value tables are synthetic (common/synthetic_values.h) runs exactly like the
// same checkpoint with those tables stored as BF16 tensors.
namespace ultramem {
namespace {

TEST(SyntheticValuesTest, EngineMatchesStoredTables) {
  const ModelConfig cfg = SmallConfig();
  RandomCheckpointOptions opts;
  opts.seed = 99;
  opts.scale = 0.2f;
  opts.synthetic_values = SyntheticValues{4242, 0.5f};
  char t1[] = "/tmp/um_synth_a_XXXXXX", t2[] = "/tmp/um_synth_b_XXXXXX";
  ASSERT_NE(mkdtemp(t1), nullptr);
  ASSERT_NE(mkdtemp(t2), nullptr);
  const std::string synthetic_dir = t1, stored_dir = t2;
  ASSERT_TRUE(WriteRandomCheckpoint(synthetic_dir, cfg, opts).ok());
  // The same tensors plus memory.{j}.values written out from the function.
  std::vector<TensorToWrite> tensors = MakeRandomTensors(cfg, opts);
  const MemoryConfig& m = *cfg.memory;
  for (int j = 0; j < cfg.NumMemoryLayers(); ++j) {
    std::vector<uint16_t> bits(static_cast<size_t>(m.NumRows()) * m.value_dim);
    FillSyntheticBf16(*opts.synthetic_values, j, 0, m.NumRows(), 0, m.value_dim, bits.data());
    TensorToWrite t;
    t.name = "memory." + std::to_string(j) + ".values";
    t.shape = {m.NumRows(), m.value_dim};
    t.dtype = DType::kBF16;
    t.bytes.resize(bits.size() * 2);
    std::memcpy(t.bytes.data(), bits.data(), t.bytes.size());
    tensors.push_back(std::move(t));
  }
  ASSERT_TRUE(WriteCheckpoint(stored_dir, cfg, tensors, false).ok());

  auto logits = [&](const std::string& dir) {
    ModelRuntimeOptions ro;
    ro.model_dir = dir;
    auto rt = OpenModelRuntime(ro);
    EXPECT_TRUE(rt.ok()) << rt.status();
    auto seq = (*rt)->engine->NewSequence();
    const std::vector<int32_t> tokens = {5, 77, 130, 9, 250, 3};
    SequenceInput in{seq.get(), absl::MakeConstSpan(tokens), true};
    ForwardOutput out;
    EXPECT_TRUE((*rt)->engine->Forward({&in, 1}, {}, &out).ok());
    return out.logits;
  };
  const std::vector<float> a = logits(synthetic_dir), b = logits(stored_dir);
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, b);
  std::filesystem::remove_all(synthetic_dir);
  std::filesystem::remove_all(stored_dir);
}

}  // namespace
}  // namespace ultramem
