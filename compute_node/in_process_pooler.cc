// Implementation of compute_node/in_process_pooler.h.
#include "compute_node/in_process_pooler.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/pooling.h"
#include "common/status.h"

namespace ultramem {

absl::StatusOr<std::unique_ptr<InProcessPooler>> InProcessPooler::Create(
    std::shared_ptr<const Checkpoint> checkpoint) {
  std::unique_ptr<InProcessPooler> pooler(new InProcessPooler());
  const ModelConfig& cfg = checkpoint->config();
  if (cfg.memory) {
    pooler->expand_ = cfg.memory->value_expand;
    pooler->value_dim_ = cfg.memory->value_dim;
    pooler->cores_ = cfg.memory->tucker_cores;
  }
  pooler->tables_.resize(cfg.NumMemoryLayers());
  for (int j = 0; j < cfg.NumMemoryLayers(); ++j) {
    const std::string name = absl::StrCat("memory.", j, ".values");
    Table& t = pooler->tables_[j];
    if (checkpoint->synthetic_values()) {  // declared, not stored: computed once here
      t.num_rows = cfg.memory->NumRows();
      UM_ASSIGN_OR_RETURN(t.owned, checkpoint->ReadF32(name));
      t.f32 = t.owned.data();
      t.row_bytes = static_cast<int64_t>(sizeof(float)) * pooler->value_dim_;
      continue;
    }
    UM_ASSIGN_OR_RETURN(TensorView view, checkpoint->Get(name));
    t.num_rows = view.entry->shape[0];
    const auto addr = reinterpret_cast<uintptr_t>(view.data);
    if (view.entry->dtype == DType::kF32 && addr % alignof(float) == 0) {
      t.f32 = reinterpret_cast<const float*>(view.data);
    } else if (view.entry->dtype == DType::kBF16 && addr % alignof(uint16_t) == 0) {
      t.bf16 = reinterpret_cast<const uint16_t*>(view.data);
    } else {
      UM_ASSIGN_OR_RETURN(t.owned, checkpoint->ReadF32(name));
      t.f32 = t.owned.data();
    }
    t.row_bytes = static_cast<int64_t>(DTypeSize(t.f32 ? DType::kF32 : DType::kBF16)) *
                  pooler->value_dim_;
  }
  pooler->checkpoint_ = std::move(checkpoint);
  return pooler;
}

std::unique_ptr<PendingPool> InProcessPooler::Start(const PoolRequest& req) {
  if (req.layer < 0 || req.layer >= static_cast<int>(tables_.size())) {
    return std::make_unique<ReadyPool>(
        absl::InvalidArgumentError(absl::StrCat("unknown memory layer ", req.layer)));
  }
  const Table& t = tables_[req.layer];
  const size_t count = static_cast<size_t>(req.num_tokens) * req.selections;
  for (size_t i = 0; i < count; ++i) {
    if (req.rows[i] < 0 || req.rows[i] >= t.num_rows || req.groups[i] < 0 ||
        req.groups[i] >= expand_) {
      return std::make_unique<ReadyPool>(absl::InvalidArgumentError(absl::StrCat(
          "memory layer ", req.layer, ": selection ", i, " has row ", req.rows[i], " group ",
          req.groups[i], " outside [0, ", t.num_rows, ") x [0, ", expand_, ")")));
    }
  }
  PoolShape shape{req.num_tokens, req.selections, expand_, value_dim_, cores_, 0, value_dim_};
  if (t.f32 != nullptr) {
    std::vector<const float*> rows(count);
    for (size_t i = 0; i < count; ++i) rows[i] = t.f32 + req.rows[i] * value_dim_;
    PoolRowsF32(shape, rows.data(), req.groups, req.scores, req.out);
  } else {
    std::vector<const uint16_t*> rows(count);
    for (size_t i = 0; i < count; ++i) rows[i] = t.bf16 + req.rows[i] * value_dim_;
    PoolRowsBf16(shape, rows.data(), req.groups, req.scores, req.out);
  }
  return std::make_unique<ReadyPool>(absl::OkStatus());
}

}  // namespace ultramem
