#include "worker/engine/au_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
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

// model.json's feature_grid rebuilds the network the weights came from: a 2 x 2 grid gives the
// heads 4 x 256 inputs; the same weights under metadata without the field (global pooling) do not
// fit and are refused by shape, not loaded into the wrong network.
TEST(AuModelTest, FeatureGridOfTheMetadataRebuildsTheTrainedNetwork) {
  testing::TempDir dir;
  v1::ModelMetadata meta =
      testing::WriteTestModel(dir / "g", {1, 2, 4, 12}, 64, 72, 1, "small_cnn", /*feature_grid=*/2);
  auto model = AuModel::Load(dir / "g");
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->metadata().feature_grid(), 2);
  auto p = (*model)->Predict({Noise(80, 80, 3)});
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->size(), 4u);

  meta.clear_feature_grid();
  ASSERT_TRUE(WriteFileAtomic(dir / "g/model.json", ModelMetadataToJson(meta)).ok());
  auto mismatch = AuModel::Load(dir / "g");
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(mismatch.status().message()), HasSubstr("g/model.pt"));
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

bool HavePythonTorchvision() {
  return std::system("/usr/bin/python3 -c 'import torchvision' 2>/dev/null") == 0;
}

// The input both sides compute on: 1 x 3 x 32 x 32, the same formula in C++ and Python.
torch::Tensor FixedInput() {
  return torch::arange(3 * 32 * 32).reshape({1, 3, 32, 32}).remainder(17).to(torch::kFloat) / 17.0 -
         0.5;
}

// sigmoid(AU head) of the run-directory model in `dir` on FixedInput().
std::vector<float> Reference(const std::string& dir, const std::string& backbone) {
  BaseNetImpl::Config config;
  config.backbone = backbone;
  config.num_aus = 4;
  config.input = 32;
  BaseNet net(config);
  torch::serialize::InputArchive archive;
  archive.load_from(dir + "/model.pt");
  net->load(archive);
  net->eval();
  torch::NoGradGuard no_grad;
  torch::Tensor p = torch::sigmoid(net->forward(FixedInput())).contiguous();
  return std::vector<float>(p.data_ptr<float>(), p.data_ptr<float>() + 4);
}

// Runs a Python script; returns its stdout.
std::string Python(const std::string& script_path) {
  std::string out;
  FILE* p = ::popen(("/usr/bin/python3 " + script_path + " 2>&1").c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

std::vector<float> Floats(const std::string& line) {
  std::vector<float> v;
  for (absl::string_view part : absl::StrSplit(line, ' ', absl::SkipEmpty()))
    v.push_back(std::stof(std::string(part)));
  return v;
}

TEST(AuModelTest, ExportedStateDictLoadsIntoTorchvisionAndAStateDictFromPythonImportsBack) {
  if (!HavePythonTorchvision())
    GTEST_SKIP() << "python3-torchvision not installed (deploy/setup.sh installs it)";
  testing::TempDir dir;
  testing::WriteTestModel(dir / "r", {1, 2, 4, 12}, 32, 36, 5, "resnet18");
  auto model = AuModel::Load(dir / "r");
  ASSERT_TRUE(model.ok()) << model.status();
  absl::Status exported = (*model)->ExportStateDict(dir / "x/r18.pth");
  ASSERT_TRUE(exported.ok()) << exported;
  ASSERT_TRUE(std::filesystem::exists(dir / "x/r18.json"));

  testing::WriteText(dir / "check.py", R"(import json, sys, torch, torchvision
d = ')" + dir.path() + R"('
x = (torch.arange(3 * 32 * 32).reshape(1, 3, 32, 32) % 17).float() / 17.0 - 0.5
sd = torch.load(d + '/x/r18.pth')
meta = json.load(open(d + '/x/r18.json'))
m = torchvision.models.resnet18(num_classes=len(meta['aus']))
m.load_state_dict({k: v for k, v in sd.items() if not k.startswith('fe_head.')})
m.eval()
with torch.no_grad():
    print(' '.join(repr(float(v)) for v in torch.sigmoid(m(x))[0]))
torch.manual_seed(3)
m2 = torchvision.models.resnet18(num_classes=4)
for mod in m2.modules():
    if isinstance(mod, torch.nn.BatchNorm2d):
        mod.running_mean.uniform_(-0.1, 0.1)
        mod.running_var.uniform_(0.5, 1.5)
m2.eval()
torch.save(m2.state_dict(), d + '/from_python.pth')
with torch.no_grad():
    print(' '.join(repr(float(v)) for v in torch.sigmoid(m2(x))[0]))
)");
  const std::vector<std::string> lines =
      absl::StrSplit(Python(dir / "check.py"), '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 2u) << absl::StrJoin(lines, "\n");
  const std::vector<float> ours = Reference(dir / "r", "resnet18"), theirs = Floats(lines[0]);
  ASSERT_EQ(theirs.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(ours[i], theirs[i], 1e-4) << i;

  // A state dict torchvision wrote, with the exported metadata: imported, served, same outputs.
  ASSERT_TRUE(
      AuModel::ImportStateDict(dir / "from_python.pth", dir / "x/r18.json", dir / "imported").ok());
  ASSERT_TRUE(AuModel::Load(dir / "imported").ok());
  const std::vector<float> imported = Reference(dir / "imported", "resnet18"),
                           python = Floats(lines[1]);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(imported[i], python[i], 1e-4) << i;
}

TEST(AuModelTest, ImportNamesWhatDoesNotFit) {
  testing::TempDir dir;
  testing::WriteTestModel(dir / "m");
  auto model = AuModel::Load(dir / "m");
  ASSERT_TRUE(model.ok());
  ASSERT_TRUE((*model)->ExportStateDict(dir / "m.pth").ok());
  // Round trip without Python: export, import, the same predictions.
  absl::Status imported = AuModel::ImportStateDict(dir / "m.pth", dir / "m.json", dir / "back");
  ASSERT_TRUE(imported.ok()) << imported;
  auto back = AuModel::Load(dir / "back");
  ASSERT_TRUE(back.ok()) << back.status();
  const cv::Mat face = Noise(40, 40, 3);
  EXPECT_EQ(*(*model)->Predict({face}), *(*back)->Predict({face}));

  // Four AUs of weights under metadata for two: the head's shape is named.
  v1::ModelMetadata two = *ReadModelMetadata(dir / "m.json");
  two.mutable_aus()->Truncate(2);
  two.mutable_thresholds()->Truncate(2);
  ASSERT_TRUE(WriteFileAtomic(dir / "two.json", ModelMetadataToJson(two)).ok());
  absl::Status s = AuModel::ImportStateDict(dir / "m.pth", dir / "two.json", dir / "bad");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("fc.weight"));
  EXPECT_FALSE(std::filesystem::exists(dir / "bad/model.pt"));
  EXPECT_EQ(AuModel::ImportStateDict(dir / "none.pth", dir / "m.json", dir / "bad").code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace mal::engine
