#ifndef MAL_WORKER_ENGINE_MAL_STEP_H_
#define MAL_WORKER_ENGINE_MAL_STEP_H_

// One training iteration of STL, MTL or MAL (docs/mal.md in shared/, docs/engine.md here).
// Torch-facing; included only by engine code.

#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "worker/engine/models.h"

namespace mal::engine {

enum class Method { kStl, kMtl, kMal };
enum class MetaMode { kExact, kFiniteDifference, kHeadsOnly };

// A training batch: AU images with labels and mask (0 = unknown), FE images with canonical labels.
struct TrainBatch {
  torch::Tensor au_images, au_labels, au_mask;
  torch::Tensor fe_images, fe_labels;  // undefined for STL
};

// A batch of the AU validation reserve, and per-AU weights of the class-rebalanced loss.
struct ValBatch {
  torch::Tensor images, labels, mask;
  torch::Tensor au_weight;  // [C]
};

struct StepOptions {
  Method method = Method::kMal;
  MetaMode mode = MetaMode::kExact;
  double fe_lambda = 1.0;      // MTL
  bool update_meta = true;     // MAL: false between meta updates (meta_interval)
  bool joint_forward = false;  // AU and FE images through one forward (shared BN statistics)
  double fd_epsilon = 1e-3;    // finite_difference: step along r, relative to |r|
  // exact: the directional derivatives grad l_i . r by forward-mode AD (one dual forward, true)
  // or the double-backward VJP of mal.md (false). Both are exact; the tests hold them equal.
  bool exact_jvp = true;
  bool profile = false;        // fill StepStats::phases (CPU timing; adds no synchronisation)
};

// What one iteration measured. Weights are those the base step used (after the meta update).
struct StepStats {
  double loss_au = 0, loss_fe = 0, loss_val = -1, loss_total = 0;
  double mean_w_au = 0, mean_w_fe = 0;    // raw meta-net outputs
  double mean_wn_au = 0, mean_wn_fe = 0;  // normalised
  torch::Tensor w_au, w_fe;               // raw, detached, on CPU ([n], [m]); undefined for STL/MTL
  std::vector<std::pair<std::string, double>> phases;  // seconds per phase, with options.profile
};

// Per-AU weights for the validation loss: C * (1/p_c) / sum_k (1/p_k), p_c the positive rate of
// AU c in the reserve, clamped to at least `floor` (so an AU without positives stays finite).
torch::Tensor RebalanceWeights(const std::vector<double>& positive_rates, double floor);

// Runs iterations on a model, its shadow (same architecture, own buffers: the virtual step and the
// validation pass happen there, so the real BatchNorm statistics move only in the meta-train
// forward) and the meta net. Not thread-safe.
class MalStep {
 public:
  MalStep(BaseNet model, BaseNet shadow, MetaNet meta);

  // One iteration at base learning rate `alpha`: for MAL with update_meta, meta-train, meta-test and
  // the meta update through `meta_optimizer`; then the base step through `base_optimizer`.
  // A non-finite loss or weight is an error and leaves the parameters untouched.
  absl::StatusOr<StepStats> Run(const TrainBatch& batch, const ValBatch* val, double alpha,
                                const StepOptions& options, torch::optim::Optimizer& base_optimizer,
                                torch::optim::Optimizer* meta_optimizer);

  // dL_v(theta'(phi))/dphi at the current state by `options.mode`, changing nothing but the
  // shadow. The model's BatchNorm statistics advance as in a training forward. One tensor per
  // meta parameter (weight, bias).
  std::vector<torch::Tensor> MetaGradient(const TrainBatch& batch, const ValBatch& val,
                                          double alpha, const StepOptions& options);

 private:
  struct Forward {
    torch::Tensor h_au, h_fe, l_au, l_fe;  // features and per-sample losses (with graph)
  };
  struct Weights {
    torch::Tensor w_au, w_fe, wn_au, wn_fe;  // raw and normalised (graph to phi)
  };
  Forward ForwardTrain(BaseNetImpl& net, const TrainBatch& batch, const StepOptions& options);
  Weights ComputeWeights(const Forward& f);
  static torch::Tensor WeightedLoss(const Forward& f, const Weights& w);
  // d_i = grad_theta l_i(theta) . r for every training sample of `base` (the meta-train
  // forward): forward-mode AD, or a forward difference through the shadow at theta + eps r.
  std::pair<torch::Tensor, torch::Tensor> DirectionalDerivatives(
      const Forward& base, const TrainBatch& batch, const std::vector<torch::Tensor>& r,
      const StepOptions& options);
  // r = grad of the validation loss at the shadow parameters (zeros where unused).
  std::vector<torch::Tensor> ValidationGradient(const ValBatch& val, double* loss);
  std::vector<torch::Tensor> MetaGradientFromForward(const Forward& f, const TrainBatch& batch,
                                                     const ValBatch& val, double alpha,
                                                     const StepOptions& options, double* val_loss,
                                                     StepStats* profile);

  BaseNet model_, shadow_;
  MetaNet meta_;
  std::vector<torch::Tensor> params_, shadow_params_;
};

// Per-sample AU loss: masked mean over AUs of sigmoid BCE ([n]).
torch::Tensor PerSampleAuLoss(const torch::Tensor& logits, const torch::Tensor& labels,
                              const torch::Tensor& mask);

// The class-rebalanced AU loss of the meta-test stage (a scalar).
torch::Tensor RebalancedAuLoss(const torch::Tensor& logits, const torch::Tensor& labels,
                               const torch::Tensor& mask, const torch::Tensor& au_weight);

}  // namespace mal::engine

#endif  // MAL_WORKER_ENGINE_MAL_STEP_H_
