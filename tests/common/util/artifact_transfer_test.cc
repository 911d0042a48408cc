#include "common/util/artifact_transfer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <deque>
#include <filesystem>

#include "common/util/files.h"
#include "common/util/sha256.h"
#include "tests/test_util.h"

namespace mal::rpc {
namespace {

using ::testing::HasSubstr;

// A download stream that yields the given chunks, then `status`.
class FakeReader : public grpc::ClientReaderInterface<v1::ArtifactChunk> {
 public:
  FakeReader(std::deque<v1::ArtifactChunk> chunks, grpc::Status status = grpc::Status::OK)
      : chunks_(std::move(chunks)), status_(std::move(status)) {}
  bool Read(v1::ArtifactChunk* chunk) override {
    if (chunks_.empty()) return false;
    *chunk = std::move(chunks_.front());
    chunks_.pop_front();
    return true;
  }
  grpc::Status Finish() override { return status_; }
  bool NextMessageSize(uint32_t* size) override {
    *size = chunks_.empty() ? 0 : static_cast<uint32_t>(chunks_.front().ByteSizeLong());
    return !chunks_.empty();
  }
  void WaitForInitialMetadata() override {}

 private:
  std::deque<v1::ArtifactChunk> chunks_;
  grpc::Status status_;
};

// The chunks SendFile would send for `data`, split at `split`.
std::deque<v1::ArtifactChunk> Chunks(const std::string& data, size_t split,
                                     const std::string& sha256 = "") {
  Sha256 hash;
  hash.Update(data);
  v1::ArtifactChunk head;
  head.set_name("model.pt");
  head.set_size(static_cast<int64_t>(data.size()));
  head.set_sha256(sha256.empty() ? hash.HexDigest() : sha256);
  v1::ArtifactChunk a, b;
  a.set_data(data.substr(0, split));
  b.set_data(data.substr(split));
  return {head, a, b};
}

std::vector<std::string> Files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    out.push_back(e.path().filename().string());
  return out;
}

TEST(ArtifactTransferTest, ReceivesAWholeFileInPlace) {
  testing::TempDir dir;
  FakeReader reader(Chunks("weights and more weights", 7));
  ASSERT_TRUE(ReceiveFile(reader, dir / "model.pt").ok());
  EXPECT_EQ(*ReadFile(dir / "model.pt"), "weights and more weights");
  EXPECT_THAT(Files(dir.path()), ::testing::ElementsAre("model.pt"));
}

TEST(ArtifactTransferTest, ACorruptOrBrokenTransferLeavesNothingAndKeepsTheOldFile) {
  testing::TempDir dir;
  testing::WriteText(dir / "model.pt", "old");
  FakeReader corrupt(Chunks("weights", 3, std::string(64, '0')));
  grpc::Status s = ReceiveFile(corrupt, dir / "model.pt");
  EXPECT_EQ(s.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(s.error_message(), HasSubstr("model.pt"));
  FakeReader broken(Chunks("weights", 3), grpc::Status(grpc::StatusCode::UNAVAILABLE, "gone"));
  EXPECT_EQ(ReceiveFile(broken, dir / "model.pt").error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(*ReadFile(dir / "model.pt"), "old");
  EXPECT_THAT(Files(dir.path()), ::testing::ElementsAre("model.pt"));
  FakeReader nowhere(Chunks("weights", 3));
  EXPECT_EQ(ReceiveFile(nowhere, dir / "missing/model.pt").error_code(),
            grpc::StatusCode::INTERNAL);
}

}  // namespace
}  // namespace mal::rpc
