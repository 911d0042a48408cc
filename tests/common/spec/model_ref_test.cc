#include "common/spec/model_ref.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace mal {
namespace {

using ::testing::HasSubstr;

TEST(ModelRefTest, ParsesTheThreeForms) {
  auto name = ParseModelRef("bp4d-mal");
  ASSERT_TRUE(name.ok()) << name.status();
  EXPECT_EQ(name->name, "bp4d-mal");
  EXPECT_EQ(name->version, 0);
  EXPECT_EQ(name->alias, "");
  auto version = ParseModelRef("bp4d-mal:12");
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(version->version, 12);
  EXPECT_TRUE(version->pinned());
  EXPECT_EQ(version->ToString(), "bp4d-mal:12");
  auto alias = ParseModelRef("bp4d_mal.v2@champion");
  ASSERT_TRUE(alias.ok());
  EXPECT_EQ(alias->name, "bp4d_mal.v2");
  EXPECT_EQ(alias->alias, "champion");
  EXPECT_EQ(alias->ToString(), "bp4d_mal.v2@champion");
  // @latest is the bare name.
  auto latest = ParseModelRef("m@latest");
  ASSERT_TRUE(latest.ok());
  EXPECT_EQ(latest->alias, "");
  EXPECT_EQ(latest->ToString(), "m");
}

TEST(ModelRefTest, RefusesMalformedReferencesQuotingThem) {
  for (const char* bad : {"", ":3", "m:0", "m:-1", "m:x", "m:3@a", "m@", "m@a b", "../etc", "a/b",
                          ".hidden", "m@12"}) {
    auto ref = ParseModelRef(bad);
    ASSERT_FALSE(ref.ok()) << bad;
    EXPECT_EQ(ref.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(std::string(ref.status().message()), HasSubstr(std::string("\"") + bad + "\""))
        << bad;
  }
  EXPECT_FALSE(ParseModelRef(std::string(200, 'a')).ok());
}

TEST(ModelRefTest, AliasRules) {
  EXPECT_TRUE(CheckModelAlias("champion").ok());
  EXPECT_TRUE(CheckModelAlias("prod-2026_q4").ok());
  EXPECT_THAT(std::string(CheckModelAlias("latest").message()), HasSubstr("reserved"));
  EXPECT_THAT(std::string(CheckModelAlias("42").message()), HasSubstr("version"));
  EXPECT_FALSE(CheckModelAlias("").ok());
  EXPECT_FALSE(CheckModelAlias(std::string(65, 'a')).ok());
  EXPECT_FALSE(CheckModelAlias("a.b").ok());
}

}  // namespace
}  // namespace mal
