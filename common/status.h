// Status helpers shared by every library: the project's one set of propagation macros
// (our Abseil, 20220623, has none) and small constructors for annotated errors.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define UM_CONCAT_INNER_(a, b) a##b
#define UM_CONCAT_(a, b) UM_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define UM_RETURN_IF_ERROR(expr)                 \
  do {                                           \
    ::absl::Status um_status_ = (expr);          \
    if (!um_status_.ok()) return um_status_;     \
  } while (0)

// `lhs` = value of `expr` (an absl::StatusOr<T>), or returns its status.
#define UM_ASSIGN_OR_RETURN(lhs, expr) \
  UM_ASSIGN_OR_RETURN_IMPL_(UM_CONCAT_(um_statusor_, __LINE__), lhs, expr)
#define UM_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
