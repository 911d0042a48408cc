#ifndef MAL_COMMON_UTIL_GRPC_STATUS_H_
#define MAL_COMMON_UTIL_GRPC_STATUS_H_

// The one place where an internal absl::Status becomes a grpc::Status and back (services are thin
// adapters and call only these).

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace mal {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// The one retry rule for calls between mal's processes: true when the same call may succeed if
// sent again unchanged (every mal RPC that changes state is idempotent: request ids, lease epochs,
// run-local event indexes): UNAVAILABLE (peer down or restarting), DEADLINE_EXCEEDED, CANCELLED
// (the peer's shutdown cancels open calls), RESOURCE_EXHAUSTED (a watch that fell behind, a full
// queue), ABORTED, and INTERNAL / UNKNOWN (what a stream broken mid-flight reports). Everything
// else (NOT_FOUND, INVALID_ARGUMENT, UNAUTHENTICATED, FAILED_PRECONDITION, ...) is final.
bool IsTransient(const grpc::Status& status);

}  // namespace mal

#endif  // MAL_COMMON_UTIL_GRPC_STATUS_H_
