#ifndef MAL_COMMON_UTIL_GRPC_STATUS_H_
#define MAL_COMMON_UTIL_GRPC_STATUS_H_

// The one place where an internal absl::Status becomes a grpc::Status and back (services are thin
// adapters and call only these).

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace mal {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace mal

#endif  // MAL_COMMON_UTIL_GRPC_STATUS_H_
