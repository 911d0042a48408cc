#include "worker/engine/models.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/spec/backbones.h"

namespace mal::engine {
namespace {

// Spec validation bounds model.feature_grid by the last feature map's side, computed by
// LastFeatureMapSide without LibTorch: it must be the models' own, also for inputs that are not a
// multiple of the stride (the ResNets round up: their stride-2 steps are padded).
TEST(ModelsTest, LastFeatureMapSideMatchesTheModels) {
  torch::NoGradGuard no_grad;
  SmallCnn small(/*width=*/4);
  ResNet resnet18(std::vector<int>{2, 2, 2, 2});  // BaseNetImpl's resnet18 and resnet34
  ResNet resnet34(std::vector<int>{3, 4, 6, 3});
  small->eval();
  resnet18->eval();
  resnet34->eval();
  for (const int input : {32, 40, 48, 64, 100, 112}) {
    SCOPED_TRACE(input);
    const torch::Tensor x = torch::zeros({1, 3, input, input});
    const int64_t s = LastFeatureMapSide("small_cnn", input);
    EXPECT_EQ(small->FeatureMap(x).sizes(), (std::vector<int64_t>{1, 32, s, s}));
    const int64_t r = LastFeatureMapSide("resnet18", input);
    EXPECT_EQ(resnet18->FeatureMap(x).sizes(), (std::vector<int64_t>{1, 512, r, r}));
    EXPECT_EQ(LastFeatureMapSide("resnet34", input), r);
    EXPECT_EQ(resnet34->FeatureMap(x).sizes(), (std::vector<int64_t>{1, 512, r, r}));
  }
  EXPECT_EQ(LastFeatureMapSide("resnet18", 112), 4);  // 56, 28, 28, 14, 7, 4
  EXPECT_EQ(LastFeatureMapSide("small_cnn", 112), 7);
  EXPECT_EQ(LastFeatureMapSide("vgg16", 224), 0);
}

// forward() average-pools the feature map to grid x grid cells, channel-major: feature
// c * grid^2 + i * grid + j is the mean of channel c over cell (i, j).
TEST(ModelsTest, ForwardPoolsTheFeatureMapToGridCells) {
  torch::manual_seed(3);
  torch::NoGradGuard no_grad;
  SmallCnn small(/*width=*/4, /*grid=*/2);
  small->eval();
  const torch::Tensor x = torch::randn({2, 3, 64, 64});
  const torch::Tensor map = small->FeatureMap(x);  // 2 x 32 x 4 x 4
  const torch::Tensor cells = small->forward(x).view({2, 32, 2, 2});
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      EXPECT_TRUE(
          torch::allclose(cells.select(3, j).select(2, i),
                          map.slice(2, 2 * i, 2 * i + 2).slice(3, 2 * j, 2 * j + 2).mean({2, 3})))
          << "cell " << i << "," << j;
    }
  }
}

}  // namespace
}  // namespace mal::engine
