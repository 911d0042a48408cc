#include "common/util/grpc_status.h"

#include <gtest/gtest.h>

namespace mal {
namespace {

TEST(GrpcStatusTest, ConvertsBothWaysKeepingCodeAndMessage) {
  const grpc::Status g = ToGrpcStatus(absl::NotFoundError("experiment e-1 not found"));
  EXPECT_EQ(g.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(g.error_message(), "experiment e-1 not found");
  const absl::Status a = FromGrpcStatus(g);
  EXPECT_EQ(a.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(a.message(), "experiment e-1 not found");
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(GrpcStatusTest, OnlyCodesThatMaySucceedOnResendAreTransient) {
  for (grpc::StatusCode c :
       {grpc::StatusCode::UNAVAILABLE, grpc::StatusCode::DEADLINE_EXCEEDED,
        grpc::StatusCode::CANCELLED, grpc::StatusCode::RESOURCE_EXHAUSTED,
        grpc::StatusCode::ABORTED, grpc::StatusCode::INTERNAL, grpc::StatusCode::UNKNOWN}) {
    EXPECT_TRUE(IsTransient(grpc::Status(c, ""))) << c;
  }
  for (grpc::StatusCode c :
       {grpc::StatusCode::OK, grpc::StatusCode::NOT_FOUND, grpc::StatusCode::INVALID_ARGUMENT,
        grpc::StatusCode::UNAUTHENTICATED, grpc::StatusCode::PERMISSION_DENIED,
        grpc::StatusCode::FAILED_PRECONDITION, grpc::StatusCode::ALREADY_EXISTS,
        grpc::StatusCode::UNIMPLEMENTED, grpc::StatusCode::DATA_LOSS}) {
    EXPECT_FALSE(IsTransient(grpc::Status(c, ""))) << c;
  }
}

}  // namespace
}  // namespace mal
