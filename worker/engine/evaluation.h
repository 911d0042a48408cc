#ifndef MAL_WORKER_ENGINE_EVALUATION_H_
#define MAL_WORKER_ENGINE_EVALUATION_H_

// Batches as tensors, and what the trainer measures at the end of an epoch (torch; engine code
// only): AU F1 and the rebalanced AU loss over a loader, and the weight the meta net gives every
// training sample (the weights/epoch_NNN.csv file, docs/engine.md).

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/data/reader.h"
#include "common/image/batch_loader.h"
#include "common/metrics/au_metrics.h"
#include "worker/engine/models.h"

namespace mal::engine {

// The batch's images as an N x 3 x H x W float tensor on `device` (normalised by the loader).
torch::Tensor Images(image::Batch& b, const torch::Device& device);
// A per-sample float vector (`n` rows, AU labels or mask) as an n x C tensor on `device`.
torch::Tensor AuTensor(std::vector<float>& v, int n, const torch::Device& device);

struct Evaluation {
  AuF1 f1{0};          // per-AU F1 at threshold 0.5
  double loss = 0;     // mean rebalanced AU loss per sample (RebalancedAuLoss with `pos_weight`)
  int64_t scored = 0;  // images that decoded: what f1 and loss count
  // Images that did not decode, left out of f1 and loss, and the first one's "path: reason".
  int64_t failed = 0;
  std::string first_failure;
};
// Every sample's AU probabilities, labels and mask (n x num_aus, row-major) of one pass.
struct EvaluationOutputs {
  std::vector<float> probs, labels, mask;
};
// The model in eval mode over one pass of `loader` (then back to train mode); with `outputs`, the
// per-sample values too (for TuneThresholds). An image that does not decode is counted in
// `failed`, not scored; the caller decides what that means (none scored: Training fails the run).
Evaluation Evaluate(BaseNetImpl& model, image::BatchLoader& loader, const torch::Tensor& pos_weight,
                    const torch::Device& device, int num_aus, EvaluationOutputs* outputs = nullptr);

// Sum and count of a sample's gradient alignment over the meta updates of one epoch, by sample.
using AlignmentSums = absl::flat_hash_map<int64_t, std::pair<double, int>>;

// The weights the current meta net gives every training sample (eval-mode features; for a
// loss-input meta net, mal.loss_input, also eval-mode per-sample losses).
struct AllWeights {
  // id,task,label,consistency,weight,normalized_weight,alignment,meta_weight: one row per
  // sample; weight is what training applies, the normalised weight divides it by mean AU weight +
  // mean FE weight over all samples (with `task_balance_fixed`, mal.task_balance:
  // fixed_in_base_step, by its own task's mean weight); alignment is the epoch's mean (empty for a
  // sample in no meta update); meta_weight is the meta net's own output for the sample, which
  // differs from weight only for AU frames under `au_task_weight`.
  std::string csv;
  double mean_au = 0, mean_fe = 0;
  double spearman = 0;  // Spearman(FE weight, annotator consistency) over FE samples with one
};
// `alignment[0]` for AU samples, `[1]` for FE samples. With `au_task_weight`
// (mal.au_weighting: task or task_in_base_step) every AU row's weight is the mean AU weight, which
// is what the real step applies; its meta_weight keeps the per-frame value the meta net learned.
// `au_pos_weight` ([C] or undefined): the AU training loss's positive weights
// (train.au_pos_weight), for the AU losses a loss-input meta net reads.
AllWeights ComputeAllWeights(BaseNetImpl& model, MetaNetImpl& meta, image::BatchLoader& au_loader,
                             const data::DatasetIndex& au, image::BatchLoader& fe_loader,
                             const data::DatasetIndex& fe, const AlignmentSums alignment[2],
                             const torch::Device& device, bool au_task_weight = false,
                             const torch::Tensor& au_pos_weight = {},
                             bool task_balance_fixed = false);

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_EVALUATION_H_
