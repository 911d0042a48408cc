#include "common/util/grpc_channel.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "tests/test_util.h"

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

using ::testing::HasSubstr;

TEST(GrpcChannelTest, TokenFilesGiveRolesAndNameTheLineOfAnError) {
  mal::testing::TempDir dir;
  const std::string path = dir / "tokens";
  mal::testing::WriteText(path,
                          "# ROLE TOKEN\n"
                          "user    u-token\n"
                          "worker\tw-token\n"
                          "\n"
                          "admin,worker a-token   # the admins' token\n"
                          "flat-token\r\n");
  auto table = LoadTokens(path);
  ASSERT_TRUE(table.ok()) << table.status();
  ASSERT_EQ(table->entries.size(), 4u);
  EXPECT_EQ(table->entries[0].token, "u-token");
  EXPECT_EQ(table->entries[0].roles, static_cast<unsigned>(Role::kUser));
  EXPECT_EQ(table->entries[1].roles, static_cast<unsigned>(Role::kWorker));
  EXPECT_EQ(table->entries[2].roles,
            static_cast<unsigned>(Role::kAdmin) | static_cast<unsigned>(Role::kWorker));
  EXPECT_EQ(table->entries[2].line, 5);
  EXPECT_EQ(table->entries[3].roles, 7u);  // the flat format: every role
  EXPECT_EQ(table->legacy_lines, 1);

  const std::pair<std::string, std::string> bad[] = {
      {"user a\nroot b\n", ":2: unknown role 'root'"},
      {"user a b\n", ":1: 3 fields"},
      {"user a\nworker a\n", ":2: the same token as line 1"},
      {"user \nworker w\n", ":1: role 'user' without a token"},
      {"worker w\nuser,admin\n", ":2: role 'user,admin' without a token"},
      {"user a\x01b\n", ":1: the token has a control character"},
      {"user " + std::string(2000, 'x') + "\n", ":1: the token has 2000 characters"},
      {"# nothing\n", " has no token"},
  };
  for (const auto& [text, message] : bad) {
    mal::testing::WriteText(path, text);
    auto refused = LoadTokens(path);
    ASSERT_FALSE(refused.ok()) << text;
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(refused.status().message()), HasSubstr(path + message)) << text;
  }
  mal::testing::WriteText(path, "\xEF\xBB\xBFuser u\n");  // a byte order mark
  EXPECT_EQ(LoadTokens(path)->entries.at(0).roles, static_cast<unsigned>(Role::kUser));
  EXPECT_TRUE(LoadTokens("")->empty());
}

}  // namespace
}  // namespace mal::rpc
