#include "common/util/grpc_channel.h"

#include <gtest/gtest.h>

namespace mal::rpc {
namespace {

// Plaintext is allowed on loopback only: an IP in 127.0.0.0/8 or ::1 after resolution, nothing
// that merely starts with "127." (issue 14).
TEST(GrpcChannelTest, LoopbackMeansLoopbackAfterResolution) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:7070"));
  EXPECT_TRUE(IsLoopbackAddress("127.1.2.3:0"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:7070"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:7070"));
  EXPECT_TRUE(IsLoopbackAddress("unix:/run/mal.sock"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:7070"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:7070"));
  EXPECT_FALSE(IsLoopbackAddress(":7070"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.1:7070"));
  EXPECT_FALSE(IsLoopbackAddress("127.example.invalid:7070"));  // a name, resolving nowhere
}

}  // namespace
}  // namespace mal::rpc
