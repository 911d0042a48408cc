#include "worker/engine/checkpoint.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "tests/test_util.h"

namespace mal::engine {
namespace {

using ::testing::HasSubstr;

struct Nets {
  Nets() {
    BaseNetImpl::Config c;
    c.backbone = "tiny";
    c.input = 8;
    c.num_aus = 3;
    c.num_expressions = 7;
    model = BaseNet(c);
    meta = MetaNet(model->feature_dim());
    base = std::make_unique<torch::optim::SGD>(model->parameters(),
                                               torch::optim::SGDOptions(0.1).momentum(0.9));
    meta_opt = std::make_unique<torch::optim::Adam>(meta->parameters());
  }
  BaseNet model{nullptr};
  MetaNet meta{nullptr};
  std::unique_ptr<torch::optim::SGD> base;
  std::unique_ptr<torch::optim::Adam> meta_opt;
};

// The position, batch sizes and FE draw included, comes back as written (no FE draw: none);
// ReadCheckpointBatches reads the batch sizes alone.
TEST(CheckpointTest, PositionAndBatchesRoundTrip) {
  testing::TempDir dir;
  const std::string path = dir / "checkpoint.pt";
  Nets a;
  Position p{3, 4, 25, 5, 2, 7, 9, 1, Batches{32, 16, 64}, "9f86d081884c7d65"};
  ASSERT_TRUE(SaveCheckpoint(path, *a.model, *a.meta, *a.base, *a.meta_opt, p).ok());
  Nets b;
  auto loaded = LoadCheckpoint(path, *b.model, *b.meta, *b.base, *b.meta_opt, torch::kCPU);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->global_iter, 25);
  EXPECT_EQ(loaded->val_next, 1);
  EXPECT_EQ(loaded->batches, (Batches{32, 16, 64}));
  EXPECT_EQ(loaded->fe_draw, "9f86d081884c7d65");
  p.fe_draw.clear();
  ASSERT_TRUE(SaveCheckpoint(path, *a.model, *a.meta, *a.base, *a.meta_opt, p).ok());
  loaded = LoadCheckpoint(path, *b.model, *b.meta, *b.base, *b.meta_opt, torch::kCPU);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->fe_draw, "");
  auto batches = ReadCheckpointBatches(path);
  ASSERT_TRUE(batches.ok()) << batches.status();
  EXPECT_EQ(*batches, (Batches{32, 16, 64}));
}

// A checkpoint written before batch sizes were recorded loads with batches 0 and reads as
// NotFound; a file that is no checkpoint is DataLoss naming it.
TEST(CheckpointTest, OldAndUnreadableCheckpoints) {
  testing::TempDir dir;
  const std::string old_path = dir / "old.pt";
  {
    Nets a;
    torch::serialize::OutputArchive archive, model_a, meta_a, base_a, meta_opt_a;
    a.model->save(model_a);
    a.meta->save(meta_a);
    a.base->save(base_a);
    a.meta_opt->save(meta_opt_a);
    archive.write("model", model_a);
    archive.write("meta", meta_a);
    archive.write("base_optimizer", base_a);
    archive.write("meta_optimizer", meta_opt_a);
    archive.write("position", torch::tensor(std::vector<int64_t>{2, 0, 10, 0, 1, 3, 0, 0}));
    archive.write("rng", at::detail::getDefaultCPUGenerator().get_state());
    archive.save_to(old_path);
  }
  Nets b;
  auto loaded = LoadCheckpoint(old_path, *b.model, *b.meta, *b.base, *b.meta_opt, torch::kCPU);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->global_iter, 10);
  EXPECT_EQ(loaded->batches, Batches{});
  EXPECT_EQ(ReadCheckpointBatches(old_path).status().code(), absl::StatusCode::kNotFound);

  const std::string junk = dir / "junk.pt";
  testing::WriteText(junk, "not a checkpoint");
  auto bad = ReadCheckpointBatches(junk);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(bad.status().message()), HasSubstr("junk.pt"));
}

}  // namespace
}  // namespace mal::engine
