#ifndef MAL_COMMON_SPEC_BACKBONES_H_
#define MAL_COMMON_SPEC_BACKBONES_H_

// Facts about the image backbones (worker/engine/models.h) that spec validation needs without
// LibTorch. Checked against the models themselves by
// ModelsTest.LastFeatureMapStrideMatchesTheModels.

#include <string_view>

namespace mal {

// Input pixels per cell of a backbone's last feature map, along each side (px / cell): the map of
// an N x 3 x H x W input is H / stride x W / stride (floor). small_cnn: four 2 x 2 max-pools (16);
// resnet18 / resnet34: the stride-2 stem convolution and max-pool and three stride-2 stages (32,
// He et al. 2016, Table 1). 0 for any other name.
constexpr int LastFeatureMapStride(std::string_view backbone) {
  if (backbone == "small_cnn") return 16;
  if (backbone == "resnet18" || backbone == "resnet34") return 32;
  return 0;
}

}  // namespace mal

#endif  // MAL_COMMON_SPEC_BACKBONES_H_
