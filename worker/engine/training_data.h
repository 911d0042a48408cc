#ifndef MAL_WORKER_ENGINE_TRAINING_DATA_H_
#define MAL_WORKER_ENGINE_TRAINING_DATA_H_

// What a fold run trains on, apart from torch: the AU and FE datasets of a spec with the fold's
// train / validation-reserve / test parts, the batch loaders over them, and the learning-rate
// schedule. The trainer (trainer.cc) turns batches into tensors.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/data/folds.h"
#include "common/data/reader.h"
#include "common/image/batch_loader.h"
#include "mal/v1/spec.pb.h"

namespace mal::engine {

struct Data {
  data::DatasetIndex au, fe;  // fe: only samples with an expression label; empty for STL
  // The FE training draw, indexes into fe.samples: each sample once, or train.fe_weights' repeats
  // (WeightedFeDraw). Empty for STL.
  std::vector<int64_t> fe_train;
  data::Fold fold;  // train, val (the meta-validation reserve) and test sample indexes
  std::vector<double> val_rates;  // per-AU positive rate in the reserve (L_v's positive weights)
};

// Loads the spec's datasets (generating SynthFace on first use), the FE training draw and the
// fold's parts: fold K of cv (1-based), or 0 for the final fit (every subject trains; the reserve
// still comes out). Errors name the field (data.au, data.fe, train.fe_weights, --fold) and the
// reason.
absl::StatusOr<Data> LoadData(const v1::ExperimentSpec& spec, int fold_number);

// How a loader visits its samples: training batches are shuffled and augmented, the meta
// validation batches shuffled (a new seeded order each epoch, so every meta-gradient sees frames
// of several subjects) but not augmented, evaluation neither.
enum class LoaderKind { kTrain, kMetaValidation, kEval };

// A loader over `samples` (indexes into `index`, which must outlive it) of `batch` images
// (N x 3 x model.input x model.input after the spec's resize, crop and flip).
absl::StatusOr<std::unique_ptr<image::BatchLoader>> MakeLoader(const data::DatasetIndex& index,
                                                               std::vector<int64_t> samples,
                                                               int batch, LoaderKind kind,
                                                               const v1::ExperimentSpec& spec,
                                                               uint64_t seed);

// 0 .. n-1 for the n samples of `index`.
std::vector<int64_t> AllOf(const data::DatasetIndex& index);

// train.fe_weights (an extension, docs/engine.md "A second run on MAL's FE weights"): the FE
// training draw graded by an earlier run's per-sample FE weights. `path` is a weights CSV
// (weights/epoch_NNN.csv: columns id and weight; where it has a task column, only its "fe" rows
// count). The samples of `fe` are ranked by weight (ties by their order in `fe`) and split into
// `levels` (>= 2) groups of equal size (n x k / levels boundaries); the k-th group from the lowest
// weights is listed k times, so the highest group is drawn `levels` times as often as the lowest.
// Returns indexes into fe.samples, each sample's repeats together, in fe's order (the loader
// shuffles). Rows for ids not in `fe` are ignored (counted in a log line). Errors, prefixed
// "train.fe_weights: ": the file's (NotFound, PermissionDenied ... naming it); InvalidArgument for
// an empty file, a header without an id or weight column, a malformed line or a weight that is not
// a finite number >= 0 (path:line), an id listed twice (path:line and the first line);
// FailedPrecondition when a sample of `fe` whose image decodes has no row (that id and how many
// have none: the weights are from a run on other FE data). A sample without a row whose image
// does not decode (a MAL run writes none for it) is listed once, outside the levels, with a
// warning.
absl::StatusOr<std::vector<int64_t>> WeightedFeDraw(const data::DatasetIndex& fe,
                                                    const std::string& path, int levels);

// The hex SHA-256 of a train.fe_weights draw (WeightedFeDraw's indexes, as little-endian int64),
// which a checkpoint records so that a resumed run refuses to go on with another draw (the CSV
// changed in between, or the field set or unset); "none" without train.fe_weights (`weighted`
// false).
std::string FeDrawDigest(const std::vector<int64_t>& fe_train, bool weighted);

// A loader that starts the next epoch by itself when one ends; tracks its position.
class CyclingLoader {
 public:
  explicit CyclingLoader(std::unique_ptr<image::BatchLoader> loader) : loader_(std::move(loader)) {}
  void Start(int64_t epoch, int64_t next) {
    epoch_ = epoch;
    next_ = next;
    loader_->StartEpoch(epoch_, next);
  }
  std::optional<image::Batch> Next() {
    for (int tries = 0; tries < 2; ++tries) {
      if (auto b = loader_->Next()) {
        next_ = b->number + 1;
        return b;
      }
      loader_->StartEpoch(++epoch_, 0);
      next_ = 0;
    }
    return std::nullopt;  // every image of a whole epoch failed
  }
  int64_t epoch() const { return epoch_; }
  int64_t next() const { return next_; }

 private:
  std::unique_ptr<image::BatchLoader> loader_;
  int64_t epoch_ = 0, next_ = 0;
};

// The base learning rate of `epoch` (from 1) under train.schedule: constant, step (lr x
// step_gamma^floor((epoch - 1) / step_epochs)) or cosine (lr / 2 x (1 + cos(pi (epoch - 1) /
// epochs))).
double LearningRate(const v1::TrainSpec& t, int epoch);

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_TRAINING_DATA_H_
