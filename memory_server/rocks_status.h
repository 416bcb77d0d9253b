// The one conversion from rocksdb::Status to absl::Status.
#pragma once

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "rocksdb/status.h"

namespace ultramem::memory {

// OK stays OK; NotFound -> NOT_FOUND; Corruption -> DATA_LOSS; Busy/TryAgain/lock errors ->
// UNAVAILABLE; everything else -> INTERNAL. The message is "<context>: <rocksdb message>".
absl::Status FromRocks(const rocksdb::Status& status, absl::string_view context);

}  // namespace ultramem::memory
