#ifndef MAL_COMMON_UTIL_STATUS_MACROS_H_
#define MAL_COMMON_UTIL_STATUS_MACROS_H_

// RETURN_IF_ERROR / ASSIGN_OR_RETURN for absl::Status and absl::StatusOr (Debian's abseil has none).

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MAL_STATUS_CONCAT_INNER_(a, b) a##b
#define MAL_STATUS_CONCAT_(a, b) MAL_STATUS_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                       \
  do {                                              \
    const ::absl::Status mal_status_ = (expr);      \
    if (!mal_status_.ok()) return mal_status_;      \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, rexpr) \
  MAL_ASSIGN_OR_RETURN_IMPL_(MAL_STATUS_CONCAT_(mal_statusor_, __LINE__), lhs, rexpr)

#define MAL_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                               \
  if (!statusor.ok()) return statusor.status();          \
  lhs = std::move(statusor).value()

#endif  // MAL_COMMON_UTIL_STATUS_MACROS_H_
