#include "common/image/batch_loader.h"

#include <set>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "tests/test_util.h"

namespace mal::image {
namespace {

using ::testing::HasSubstr;

class BatchLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    index_.aus = {1, 2};
    for (int i = 0; i < 10; ++i) {
      data::Sample s;
      s.id = absl::StrCat(i);
      s.image = dir_ / absl::StrCat(i, ".png");
      testing::WriteImage(s.image, 12, 20 * i);
      s.au = {static_cast<int8_t>(i % 2), data::kAuUnknown};
      s.expression = i % 7;
      index_.samples.push_back(s);
    }
  }
  BatchLoader::Options Opts(int threads) {
    BatchLoader::Options o;
    o.batch_size = 4;
    o.threads = threads;
    o.prefetch = 2;
    o.transform.resize = 12;
    o.transform.crop = 8;
    o.seed = 3;
    return o;
  }
  std::vector<int64_t> All() { return {0, 1, 2, 3, 4, 5, 6, 7, 8, 9}; }
  std::vector<Batch> Epoch(BatchLoader& loader, int64_t epoch, int64_t first = 0) {
    loader.StartEpoch(epoch, first);
    std::vector<Batch> out;
    while (auto b = loader.Next()) out.push_back(std::move(*b));
    return out;
  }
  testing::TempDir dir_;
  data::DatasetIndex index_;
};

TEST_F(BatchLoaderTest, DeliversEverySampleOnceWithLabels) {
  auto loader = BatchLoader::Create(&index_, All(), Opts(2));
  ASSERT_TRUE(loader.ok());
  auto batches = Epoch(**loader, 0);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[2].size, 2);
  std::set<int64_t> seen;
  for (const Batch& b : batches) {
    EXPECT_EQ(b.images.size(), static_cast<size_t>(b.size) * 3 * 8 * 8);
    for (int i = 0; i < b.size; ++i) {
      const int64_t s = b.samples[i];
      EXPECT_TRUE(seen.insert(s).second);
      EXPECT_EQ(b.au_labels[2 * i], s % 2);
      EXPECT_EQ(b.au_mask[2 * i], 1.f);
      EXPECT_EQ(b.au_mask[2 * i + 1], 0.f);
      EXPECT_EQ(b.expressions[i], s % 7);
    }
  }
  EXPECT_EQ(seen.size(), 10u);
}

TEST_F(BatchLoaderTest, ContentDependsOnSeedAndEpochNotThreads) {
  auto one = BatchLoader::Create(&index_, All(), Opts(1));
  auto three = BatchLoader::Create(&index_, All(), Opts(3));
  ASSERT_TRUE(one.ok() && three.ok());
  auto a = Epoch(**one, 4), b = Epoch(**three, 4);
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    EXPECT_EQ(a[k].samples, b[k].samples);
    EXPECT_EQ(a[k].images, b[k].images);
  }
  auto c = Epoch(**one, 5);
  EXPECT_NE(a[0].samples, c[0].samples);
}

TEST_F(BatchLoaderTest, ResumesAtABatchAndRestartsEpochs) {
  auto loader = BatchLoader::Create(&index_, All(), Opts(2));
  ASSERT_TRUE(loader.ok());
  auto full = Epoch(**loader, 1);
  auto tail = Epoch(**loader, 1, 1);
  ASSERT_EQ(tail.size(), 2u);
  EXPECT_EQ(tail[0].samples, full[1].samples);
  // Abandon an epoch half way: the next one starts clean.
  (*loader)->StartEpoch(2);
  ASSERT_TRUE((*loader)->Next().has_value());
  auto again = Epoch(**loader, 1);
  EXPECT_EQ(again.size(), 3u);
  EXPECT_EQ(again[0].samples, full[0].samples);
}

TEST_F(BatchLoaderTest, CorruptImageIsLeftOutAndReported) {
  testing::WriteText(index_.samples[3].image, "corrupt");
  BatchLoader::Options o = Opts(2);
  o.shuffle = false;
  o.augment = false;
  auto loader = BatchLoader::Create(&index_, All(), o);
  ASSERT_TRUE(loader.ok());
  auto batches = Epoch(**loader, 0);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[0].size, 3);
  ASSERT_EQ(batches[0].failures.size(), 1u);
  EXPECT_THAT(batches[0].failures[0], HasSubstr("3.png"));
  EXPECT_EQ((*loader)->failed_images(), 1);
}

TEST_F(BatchLoaderTest, BatchOfOnlyCorruptImagesCarriesFailuresForward) {
  for (int i = 0; i < 4; ++i) testing::WriteText(index_.samples[i].image, "corrupt");
  BatchLoader::Options o = Opts(1);
  o.shuffle = false;
  auto loader = BatchLoader::Create(&index_, All(), o);
  ASSERT_TRUE(loader.ok());
  auto batches = Epoch(**loader, 0);
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[0].failures.size(), 4u);
}

TEST_F(BatchLoaderTest, RejectsBadOptions) {
  BatchLoader::Options o = Opts(1);
  o.transform.crop = 20;
  EXPECT_FALSE(BatchLoader::Create(&index_, All(), o).ok());
  EXPECT_FALSE(BatchLoader::Create(&index_, {42}, Opts(1)).ok());
}

}  // namespace
}  // namespace mal::image
