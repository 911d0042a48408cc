#include "tests/worker/engine/model_fixture.h"

#include <torch/torch.h>

#include <filesystem>

#include "common/spec/model_metadata.h"
#include "common/util/files.h"
#include "worker/engine/models.h"

namespace mal::testing {

v1::ModelMetadata WriteTestModel(const std::string& dir, const std::vector<int>& aus, int input,
                                 int resize, uint64_t seed, const std::string& backbone,
                                 int feature_grid) {
  std::filesystem::create_directories(dir);
  torch::manual_seed(seed);
  engine::BaseNetImpl::Config config;
  config.backbone = backbone;
  config.num_aus = static_cast<int64_t>(aus.size());
  config.input = input;
  config.feature_grid = feature_grid;
  engine::BaseNet net(config);
  torch::serialize::OutputArchive archive;
  net->save(archive);
  archive.save_to(dir + "/model.pt");
  v1::ModelMetadata m;
  m.set_format(kModelFormat);
  m.set_backbone(backbone);
  for (int au : aus) {
    m.add_aus(au);
    m.add_thresholds(0.5);
  }
  m.set_input(input);
  m.set_resize(resize);
  if (feature_grid != 1) m.set_feature_grid(feature_grid);
  for (float v : {0.485f, 0.456f, 0.406f}) m.add_mean(v);
  for (float v : {0.229f, 0.224f, 0.225f}) m.add_std(v);
  m.set_experiment("fixture");
  m.set_method("stl");
  m.set_fold(1);
  (void)WriteFileAtomic(dir + "/model.json", ModelMetadataToJson(m));
  return m;
}

}  // namespace mal::testing
