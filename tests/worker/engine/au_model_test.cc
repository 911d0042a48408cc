#include "worker/engine/au_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>

#include "common/image/transforms.h"
#include "common/spec/model_metadata.h"
#include "common/util/files.h"
#include "tests/test_util.h"
#include "tests/worker/engine/model_fixture.h"
#include "worker/engine/models.h"

namespace mal::engine {
namespace {

using ::testing::HasSubstr;

cv::Mat Noise(int w, int h, int seed) {
  cv::Mat m(h, w, CV_8UC3);
  cv::theRNG().state = static_cast<uint64_t>(seed);
  cv::randu(m, 0, 255);
  return m;
}

TEST(AuModelTest, PredictsWhatTheSavedNetworkComputesOnTheEvaluationTransform) {
  testing::TempDir dir;
  const v1::ModelMetadata meta = testing::WriteTestModel(dir / "m");
  auto model = AuModel::Load(dir / "m");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->metadata().aus_size(), 4);
  EXPECT_GT((*model)->bytes(), 1000);

  const std::vector<cv::Mat> faces = {Noise(50, 60, 1), Noise(120, 120, 2)};
  auto p = (*model)->Predict(faces);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->size(), 8u);

  // The same computation by hand: the network loaded from model.pt, the trainer's eval transform.
  BaseNetImpl::Config config;
  config.num_aus = 4;
  config.input = 32;
  BaseNet net(config);
  torch::serialize::InputArchive archive;
  archive.load_from(dir / "m/model.pt");
  net->load(archive);
  net->eval();
  image::TransformOptions t;
  t.resize = 36;
  t.crop = 32;
  t.hflip = false;
  torch::Tensor x = torch::empty({2, 3, 32, 32});
  for (int i = 0; i < 2; ++i)
    image::TransformToTensor(faces[i], t, nullptr, x.data_ptr<float>() + i * 3 * 32 * 32);
  torch::NoGradGuard no_grad;
  torch::Tensor expected = torch::sigmoid(net->forward(x));
  for (int i = 0; i < 8; ++i) EXPECT_NEAR((*p)[i], expected.view(-1)[i].item<float>(), 1e-5) << i;

  // Grey input is accepted; an empty image is refused by index.
  cv::Mat grey(40, 40, CV_8UC1, cv::Scalar(100));
  EXPECT_TRUE((*model)->Predict({grey}).ok());
  auto empty = (*model)->Predict({faces[0], cv::Mat()});
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(std::string(empty.status().message()), HasSubstr("face 1"));
  EXPECT_TRUE((*model)->Predict({})->empty());
}

TEST(AuModelTest, LoadErrorsNameTheFileOrTheField) {
  testing::TempDir dir;
  auto none = AuModel::Load(dir / "none");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(none.status().message()), HasSubstr("model.json"));

  testing::WriteTestModel(dir / "m");
  std::filesystem::remove(dir / "m/model.pt");
  auto no_weights = AuModel::Load(dir / "m");
  EXPECT_EQ(no_weights.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(no_weights.status().message()), HasSubstr("model.pt"));

  // Weights of a 4-AU network under metadata that says 3 AUs.
  v1::ModelMetadata meta = testing::WriteTestModel(dir / "x");
  meta.mutable_aus()->RemoveLast();
  meta.mutable_thresholds()->RemoveLast();
  ASSERT_TRUE(WriteFileAtomic(dir / "x/model.json", ModelMetadataToJson(meta)).ok());
  auto mismatch = AuModel::Load(dir / "x");
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(mismatch.status().message()), HasSubstr("x/model.pt"));

  testing::WriteText(dir / "t/model.pt", "not a torch archive");
  meta = testing::WriteTestModel(dir / "t2");
  std::filesystem::copy_file(dir / "t2/model.json", dir / "t/model.json");
  EXPECT_EQ(AuModel::Load(dir / "t").status().code(), absl::StatusCode::kDataLoss);

  testing::WriteTestModel(dir / "d");
  auto device = AuModel::Load(dir / "d", "tpu");
  EXPECT_EQ(device.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace mal::engine
