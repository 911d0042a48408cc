#ifndef MAL_TESTS_WORKER_ENGINE_MODEL_FIXTURE_H_
#define MAL_TESTS_WORKER_ENGINE_MODEL_FIXTURE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "mal/v1/inference.pb.h"

namespace mal::testing {

// Writes `dir`/model.pt (a randomly initialised `backbone` with `aus`.size() AU outputs, seeded)
// and `dir`/model.json, as the trainer's Export does: a model AuModel::Load accepts, without
// training one. feature_grid 1 writes metadata without the field (as before it existed).
// Returns the metadata written.
v1::ModelMetadata WriteTestModel(const std::string& dir,
                                 const std::vector<int>& aus = {1, 2, 4, 12}, int input = 32,
                                 int resize = 36, uint64_t seed = 1,
                                 const std::string& backbone = "small_cnn", int feature_grid = 1);

}  // namespace mal::testing

#endif  // MAL_TESTS_WORKER_ENGINE_MODEL_FIXTURE_H_
