#ifndef MAL_COMMON_SPEC_BACKBONES_H_
#define MAL_COMMON_SPEC_BACKBONES_H_

// Facts about the image backbones (worker/engine/models.h) that spec validation needs without
// LibTorch. Checked against the models themselves by ModelsTest.LastFeatureMapSideMatchesTheModels.

#include <string>
#include <string_view>
#include <vector>

namespace mal {

// Every backbone a spec may name (model.backbone), as models.cc builds them.
inline const std::vector<std::string>& Backbones() {
  static const auto* const names =
      new std::vector<std::string>{"small_cnn", "resnet18", "resnet34"};
  return *names;
}

// The side (cells) of a backbone's last feature map for a square input of `input` px, i.e. the
// map of an N x 3 x input x input image is N x C x side x side. small_cnn: four unpadded 2 x 2
// max-pools, floor(input / 16). resnet18 / resnet34: five padded stride-2 steps (the stem
// convolution, its max-pool and the first convolution of stages 2-4; He et al. 2016, Table 1), each
// ceil(x / 2), so ceil(input / 32). 0 for any other backbone name or input < 1.
constexpr int LastFeatureMapSide(std::string_view backbone, int input) {
  if (input < 1) return 0;
  if (backbone == "small_cnn") return input / 16;
  if (backbone == "resnet18" || backbone == "resnet34") return (input + 31) / 32;
  return 0;
}

}  // namespace mal

#endif  // MAL_COMMON_SPEC_BACKBONES_H_
