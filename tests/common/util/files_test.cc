#include "common/util/files.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace mal {
namespace {

TEST(WriteFileAtomicTest, WritesAndLeavesNoTempFile) {
  testing::TempDir dir;
  ASSERT_TRUE(WriteFileAtomic(dir / "out.txt", "hello").ok());
  EXPECT_EQ(*ReadFile(dir / "out.txt"), "hello");
  ASSERT_TRUE(WriteFileAtomic(dir / "out.txt", "again").ok());
  EXPECT_EQ(*ReadFile(dir / "out.txt"), "again");
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
}

// A label file that is a directory (split.txt/) was read as an empty file.
TEST(ReadFileTest, ADirectoryIsNotAnEmptyFile) {
  testing::TempDir dir;
  std::filesystem::create_directories(dir / "split.txt");
  auto text = ReadFile(dir / "split.txt");
  ASSERT_FALSE(text.ok());
  EXPECT_EQ(text.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(text.status().message()).find("split.txt: is a directory"),
            std::string::npos);
  EXPECT_EQ(ReadFile(dir / "missing").status().code(), absl::StatusCode::kNotFound);
}

// A limit refuses a large regular file by its size and an endless device after max + 1 bytes.
TEST(ReadFileTest, AMaximumSizeRefusesLargeFilesAndEndlessDevicesWithoutReadingThemWhole) {
  testing::TempDir dir;
  testing::WriteText(dir / "spec.yaml", "name: x\n");
  EXPECT_EQ(*ReadFile(dir / "spec.yaml", 8), "name: x\n");
  auto large = ReadFile(dir / "spec.yaml", 7);
  ASSERT_EQ(large.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(large.status().message()).find("spec.yaml: larger than 7 bytes"),
            std::string::npos);
  EXPECT_EQ(ReadFile("/dev/zero", 1 << 20).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*ReadFile("/dev/null", 10), "");
  EXPECT_EQ(ReadFile(dir / "missing", 10).status().code(), absl::StatusCode::kNotFound);
  std::filesystem::create_directories(dir / "d");
  EXPECT_EQ(ReadFile(dir / "d", 10).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(WriteFileAtomicTest, FailsIntoMissingDirectoryWithPath) {
  absl::Status s = WriteFileAtomic("/nonexistent-dir/out.txt", "x");
  ASSERT_FALSE(s.ok());
  EXPECT_NE(std::string(s.message()).find("/nonexistent-dir/out.txt"), std::string::npos);
}

TEST(ResolvePathTest, KeepsAbsoluteJoinsRelative) {
  EXPECT_EQ(ResolvePath("/data", "/abs/x"), "/abs/x");
  EXPECT_EQ(ResolvePath("/data", "rel/x"), "/data/rel/x");
  EXPECT_EQ(ResolvePath("/data", ""), "");
}

}  // namespace
}  // namespace mal
