#include "common/util/args.h"

#include <gtest/gtest.h>

namespace mal::cli {
namespace {

TEST(ArgsTest, ParsesValuesFlagsAliasesAndPositionals) {
  auto a = Args::Parse({"--root", "/d", "--aus=1,2", "-o", "json", "--strict", "extra"},
                       {"root", "aus", "output"}, {"strict"}, {{"o", "output"}});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->Get("root"), "/d");
  EXPECT_EQ(a->Get("aus"), "1,2");
  EXPECT_EQ(a->Get("output"), "json");
  EXPECT_TRUE(a->Flag("strict"));
  EXPECT_EQ(a->positional().size(), 1u);
  EXPECT_EQ(a->Get("missing", "dflt"), "dflt");
}

TEST(ArgsTest, RejectsUnknownOptionsAndMissingValues) {
  EXPECT_FALSE(Args::Parse({"--nope"}, {"root"}, {}).ok());
  EXPECT_FALSE(Args::Parse({"--root"}, {"root"}, {}).ok());
  EXPECT_FALSE(Args::Parse({"--strict=1"}, {}, {"strict"}).ok());
}

TEST(ArgsTest, NumbersAreCheckedWithTheOptionName) {
  auto a = Args::Parse({"--frames", "ten"}, {"frames"}, {});
  ASSERT_TRUE(a.ok());
  auto v = a->GetInt("frames", 1);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(std::string(v.status().message()).find("--frames"), std::string::npos);
  EXPECT_EQ(*a->GetInt("other", 5), 5);
  int frames = 1, size = 7;
  absl::Status bad = a->ReadInts({{"size", &size}, {"frames", &frames}});
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(size, 7);
  auto b = Args::Parse({"--frames", "12"}, {"frames", "size"}, {});
  ASSERT_TRUE(b->ReadInts({{"frames", &frames}, {"size", &size}}).ok());
  EXPECT_EQ(frames, 12);
  EXPECT_EQ(size, 7);
}

}  // namespace
}  // namespace mal::cli
