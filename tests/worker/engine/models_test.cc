#include "worker/engine/models.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "common/spec/backbones.h"

namespace mal::engine {
namespace {

// Spec validation bounds model.feature_grid by the last feature map's size, computed from
// LastFeatureMapStride without LibTorch: the strides must be the models' own.
TEST(ModelsTest, LastFeatureMapStrideMatchesTheModels) {
  torch::NoGradGuard no_grad;
  for (const int input : {32, 64, 96}) {
    SCOPED_TRACE(input);
    const torch::Tensor x = torch::zeros({1, 3, input, input});
    SmallCnn small(/*width=*/4);
    small->eval();
    const int s = LastFeatureMapStride("small_cnn");
    EXPECT_EQ(small->FeatureMap(x).sizes(), (std::vector<int64_t>{1, 32, input / s, input / s}));
    for (const std::string name : {"resnet18", "resnet34"}) {
      SCOPED_TRACE(name);
      ResNet resnet(name == "resnet18" ? std::vector<int>{2, 2, 2, 2}
                                       : std::vector<int>{3, 4, 6, 3});
      resnet->eval();
      const int r = LastFeatureMapStride(name);
      EXPECT_EQ(resnet->FeatureMap(x).sizes(),
                (std::vector<int64_t>{1, 512, input / r, input / r}));
    }
  }
  EXPECT_EQ(LastFeatureMapStride("vgg16"), 0);
}

// forward() is the feature map average-pooled to grid x grid cells and flattened.
TEST(ModelsTest, ForwardPoolsTheFeatureMapToTheGrid) {
  torch::manual_seed(3);
  torch::NoGradGuard no_grad;
  SmallCnn small(/*width=*/4, /*grid=*/2);
  small->eval();
  const torch::Tensor x = torch::randn({2, 3, 64, 64});
  const torch::Tensor map = small->FeatureMap(x);  // 2 x 32 x 4 x 4
  const torch::Tensor expected =
      torch::adaptive_avg_pool2d(map, {2, 2}).flatten(1);  // cell (0,0) = mean of map[:, :, :2, :2]
  EXPECT_TRUE(torch::allclose(small->forward(x), expected));
  EXPECT_TRUE(torch::allclose(small->forward(x).view({2, 32, 2, 2}).select(3, 0).select(2, 0),
                              map.slice(2, 0, 2).slice(3, 0, 2).mean({2, 3})));
}

}  // namespace
}  // namespace mal::engine
