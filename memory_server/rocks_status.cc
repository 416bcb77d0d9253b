// Implementation of memory_server/rocks_status.h.
#include "memory_server/rocks_status.h"

#include "absl/strings/str_cat.h"

namespace ultramem::memory {

absl::Status FromRocks(const rocksdb::Status& status, absl::string_view context) {
  if (status.ok()) return absl::OkStatus();
  std::string message = absl::StrCat(context, ": ", status.ToString());
  if (status.IsNotFound()) return absl::NotFoundError(message);
  if (status.IsCorruption()) return absl::DataLossError(message);
  if (status.IsBusy() || status.IsTryAgain() || status.IsTimedOut()) {
    return absl::UnavailableError(message);
  }
  if (status.IsIOError() && status.ToString().find("lock") != std::string::npos) {
    return absl::UnavailableError(message);
  }
  return absl::InternalError(message);
}

}  // namespace ultramem::memory
