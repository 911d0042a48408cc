#include "server/core/artifact_store.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "common/util/files.h"
#include "common/util/sha256.h"
#include "tests/test_util.h"

namespace mal::server {
namespace {

namespace fs = std::filesystem;

std::string Hex(const std::string& data) {
  Sha256 h;
  h.Update(data);
  return h.HexDigest();
}

TEST(Sha256Test, KnownDigest) {
  EXPECT_EQ(Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(ArtifactStoreTest, CommitPutsTheFileInPlace) {
  testing::TempDir dir;
  ArtifactStore store(dir / "a");
  auto up = store.BeginUpload("exp-1", 0, 2, "weights/epoch_001.csv");
  ASSERT_TRUE(up.ok()) << up.status();
  ASSERT_TRUE((*up)->Append("id,w\n").ok());
  ASSERT_TRUE((*up)->Append("x,0.5\n").ok());
  auto size = (*up)->Commit(Hex("id,w\nx,0.5\n"));
  ASSERT_TRUE(size.ok()) << size.status();
  EXPECT_EQ(*size, 11);
  auto path = store.Find("exp-1", 0, 2, "weights/epoch_001.csv");
  ASSERT_TRUE(path.ok());
  EXPECT_EQ(*ReadFile(*path), "id,w\nx,0.5\n");
}

TEST(ArtifactStoreTest, ChecksumMismatchLeavesNothing) {
  testing::TempDir dir;
  ArtifactStore store(dir / "a");
  {
    auto up = store.BeginUpload("exp-1", 0, 1, "model.pt");
    ASSERT_TRUE(up.ok());
    ASSERT_TRUE((*up)->Append("corrupted in transit").ok());
    auto size = (*up)->Commit(Hex("what was sent"));
    EXPECT_EQ(size.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(size.status().message(), ::testing::HasSubstr("checksum"));
  }
  EXPECT_FALSE(store.Find("exp-1", 0, 1, "model.pt").ok());
  EXPECT_TRUE(fs::is_empty(store.RunDir("exp-1", 0, 1)));  // no temporary file left either
}

TEST(ArtifactStoreTest, AbandonedUploadLeavesNothing) {
  testing::TempDir dir;
  ArtifactStore store(dir / "a");
  {
    auto up = store.BeginUpload("exp-1", 0, 1, "checkpoint.pt");
    ASSERT_TRUE(up.ok());
    ASSERT_TRUE((*up)->Append("half").ok());
  }
  EXPECT_TRUE(fs::is_empty(store.RunDir("exp-1", 0, 1)));
}

TEST(ArtifactStoreTest, PartialUploadsOfACrashAreRemovedAtStart) {
  testing::TempDir dir;
  ArtifactStore store(dir / "a");
  testing::WriteText(store.RunDir("exp-1", 0, 1) + "/checkpoint.pt.upload-123-0", "half");
  testing::WriteText(store.RunDir("exp-1", 0, 1) + "/model.pt", "whole");
  EXPECT_EQ(store.RemovePartialUploads(), 1);
  EXPECT_TRUE(store.Find("exp-1", 0, 1, "model.pt").ok());
  EXPECT_FALSE(fs::exists(store.RunDir("exp-1", 0, 1) + "/checkpoint.pt.upload-123-0"));
}

TEST(ArtifactStoreTest, NamesMayNotEscape) {
  for (const char* bad : {"", "../x", "/etc/passwd", "a/../../b", "a//b", "a b", "x\n"}) {
    EXPECT_FALSE(ArtifactStore::CheckName(bad).ok()) << bad;
  }
  EXPECT_TRUE(ArtifactStore::CheckName("weights/epoch_012.csv").ok());
}

}  // namespace
}  // namespace mal::server

namespace mal::server {
namespace {

// Issue 14: uploads have a size limit and a free-disk floor; either refusal names the figures and
// leaves no file behind. Over the limit is INVALID_ARGUMENT (the same file is refused on every
// try: a worker does not retry it), a full disk RESOURCE_EXHAUSTED (retried: it may clear).
TEST(ArtifactStoreTest, OversizedUploadsAndAFullDiskAreRefused) {
  testing::TempDir dir;
  ArtifactStore small(dir / "a", ArtifactStore::Limits{/*max_upload_bytes=*/10, /*min_free=*/0});
  auto up = small.BeginUpload("exp-1", 0, 1, "model.pt");
  ASSERT_TRUE(up.ok());
  ASSERT_TRUE((*up)->Append("12345").ok());
  const absl::Status over = (*up)->Append("678901");
  EXPECT_EQ(over.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(over.message()), ::testing::HasSubstr("model.pt: over the upload limit"));
  up->reset();
  // No disk has an exabyte free: the floor refuses the upload before anything is written.
  ArtifactStore full(dir / "b", ArtifactStore::Limits{int64_t{1} << 40, int64_t{1} << 60});
  auto refused = full.BeginUpload("exp-1", 0, 1, "model.pt");
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(refused.status().message()), ::testing::HasSubstr("nearly full"));
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir.path())) files += e.is_regular_file();
  EXPECT_EQ(files, 0);
}

}  // namespace
}  // namespace mal::server
